// Running the REAL command line: `node dist/cli/main.js ...` as a child process, the way users and
// scripts run it, so exit codes, stdout/stderr separation and signal handling are what is tested.
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, rmdirSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll } from "vitest";

export const ROOT = fileURLToPath(new URL("../../", import.meta.url));
export const CLI = join(ROOT, "dist", "cli", "main.js");

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: Buffer;
  stderr: string;
}

export interface RunOptions {
  cwd?: string;
  /** Bytes for stdin (closed afterwards); without it stdin is closed at once. */
  input?: Uint8Array;
  /** Kill the process after this long (a hung CLI fails the test instead of the suite). */
  timeoutMs?: number;
  /** Extra environment (over the test's, with NO_PROGRESS=1). */
  env?: Record<string, string | undefined>;
}

/** Starts the CLI; stdin, stdout and stderr are pipes. */
export function start(args: readonly string[], options: { cwd?: string; env?: Record<string, string | undefined> } = {}): ChildProcess {
  return spawn(process.execPath, [CLI, ...args], {
    cwd: options.cwd ?? ROOT,
    stdio: ["pipe", "pipe", "pipe"],
    // No progress line: stderr must hold only messages the tests look at.
    env: { ...process.env, NO_PROGRESS: "1", ...options.env },
  });
}

/** Resolves with the exit status and everything the process wrote. */
export function finished(child: ChildProcess, timeoutMs = 45_000): Promise<RunResult> {
  const stdout: Buffer[] = [];
  let stderr = "";
  child.stdout?.on("data", (d: Buffer) => stdout.push(d));
  child.stderr?.on("data", (d: Buffer) => (stderr += d.toString("utf8")));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`CLI did not finish within ${timeoutMs} ms; stderr so far:\n${stderr}`));
    }, timeoutMs);
    child.on("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout: Buffer.concat(stdout), stderr });
    });
  });
}

/** Runs the CLI to completion. */
export function run(args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  const child = start(args, { ...(options.cwd !== undefined ? { cwd: options.cwd } : {}), ...(options.env ? { env: options.env } : {}) });
  const done = finished(child, options.timeoutMs);
  // The CLI may exit before reading all of stdin (a usage error): that is not the test's error.
  child.stdin?.on("error", () => undefined);
  child.stdin?.end(options.input);
  return done;
}

/** Resolves with the first match of `pattern` in the child's stderr. */
export function waitForStderr(child: ChildProcess, pattern: RegExp, timeoutMs = 30_000): Promise<RegExpExecArray> {
  return new Promise((resolve, reject) => {
    let text = "";
    const onData = (d: Buffer): void => {
      text += d.toString("utf8");
      const match = pattern.exec(text);
      if (match) {
        cleanup();
        resolve(match);
      }
    };
    const onClose = (): void => {
      cleanup();
      reject(new Error(`process ended before printing ${pattern}; stderr:\n${text}`));
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`no ${pattern} on stderr within ${timeoutMs} ms; stderr:\n${text}`));
    }, timeoutMs);
    function cleanup(): void {
      clearTimeout(timer);
      child.stderr?.off("data", onData);
      child.off("close", onClose);
    }
    child.stderr?.on("data", onData);
    child.on("close", onClose);
  });
}

/** A fresh temporary directory, removed by the returned function. */
export function tempDir(): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), "migstream-e2e-"));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/**
 * The scratch folder of a test file's CLI runs: the CLI is built and the folder made before the
 * file's tests (register this first, so later `beforeAll`s can use it), removed after them.
 */
export function useTestDir(): { readonly dir: string; at: (name: string) => string } {
  let made: { dir: string; cleanup: () => void } | undefined;
  beforeAll(async () => {
    await ensureBuilt();
    made = tempDir();
  });
  afterAll(() => made?.cleanup());
  const scratch = {
    get dir(): string {
      if (!made) throw new Error("the test folder exists only while the file's tests run");
      return made.dir;
    },
    at: (name: string): string => join(scratch.dir, name),
  };
  return scratch;
}

/** Leftover temporary outputs (AtomicFile names them `.<name>.<pid>.<hex>.migstream-tmp`). */
export function tempFiles(dir: string): string[] {
  return readdirSync(dir).filter((name) => name.endsWith(".migstream-tmp"));
}

/**
 * State-like bytes: per 16 KiB, a mix of zero stretches, repeated patterns and random bytes,
 * so streams carry raw and zero records.
 */
export function makeState(length: number, seed: number): Buffer {
  const out = Buffer.alloc(length);
  let x = seed >>> 0 || 1;
  for (let at = 0; at < length; at += 16384) {
    const end = Math.min(length, at + 16384);
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    const kind = x % 3;
    if (kind === 0) continue;
    if (kind === 1) out.fill(`pattern-${x.toString(16)}-`, at, end);
    else randomBytes(end - at).copy(out, at);
  }
  return out;
}

function newestMtime(dir: string): number {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    newest = Math.max(newest, entry.isDirectory() ? newestMtime(path) : statSync(path).mtimeMs);
  }
  return newest;
}

/**
 * Builds dist/ when it is missing or older than src/ (`npm test` builds first; this covers
 * running vitest alone). Both e2e files run in parallel workers: a lock directory makes one of
 * them build while the other waits.
 */
export async function ensureBuilt(): Promise<void> {
  const stale = (): boolean => !existsSync(CLI) || statSync(CLI).mtimeMs < newestMtime(join(ROOT, "src"));
  if (!stale()) return;
  const lock = join(ROOT, "dist", ".e2e-build-lock");
  mkdirSync(join(ROOT, "dist"), { recursive: true });
  for (const started = Date.now(); ; ) {
    try {
      mkdirSync(lock);
      break;
    } catch {
      // Another worker builds: wait for it, then look again (a lock older than 2 min is stale).
      if (Date.now() - started > 120_000) rmSync(lock, { recursive: true, force: true });
      await new Promise((resolve) => setTimeout(resolve, 250));
      if (!stale()) return;
    }
  }
  try {
    if (!stale()) return;
    try {
      execFileSync("npx", ["tsc", "-p", "tsconfig.build.json"], { cwd: ROOT, stdio: "pipe" });
    } catch (error) {
      // tsc still emits JavaScript on type errors (type checking is `npm run typecheck`'s job);
      // only a missing entry point is fatal here.
      if (!existsSync(CLI)) throw error;
    }
    execFileSync(process.execPath, ["scripts/finish-build.mjs"], { cwd: ROOT, stdio: "pipe" });
  } finally {
    rmdirSync(lock);
  }
}
