// What every command shares: exit codes, errors (one style, with a hint when there is a known way
// out), inputs ("-" is stdin), outputs (atomic files, written-through devices and FIFOs, stdout),
// and reports on stdout (--json) or stderr.
import { accessSync, constants, createReadStream, createWriteStream, fstatSync, fsync, mkdtempSync, rmSync, type Stats, statSync } from "node:fs";
import { once } from "node:events";
import { createConnection } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { pipeline } from "node:stream/promises";
import { type FileHandle, open } from "node:fs/promises";
import { isatty } from "node:tty";
import type { Writable } from "node:stream";
import type { Command } from "commander";
import { MigrationError } from "../core/errors.js";
import { AtomicFile, ioError, onInterruptCleanup, resolveOutputPath } from "../node/atomic-file.js";
import { StreamFile } from "../node/files.js";
import { parseSize, sizeFlag } from "./format.js";
import { peakRss } from "./json.js";
import { explainTls } from "./tls-failure.js";

export { formatBytes, parseSize } from "./format.js";
export { Progress } from "./progress.js";

/** Exit codes: the CLI contract. A signal ends a command with 128 + its number. */
export const EXIT = { ok: 0, usage: 1, corrupt: 2, incompatible: 3, io: 4 } as const;
export const SIGNAL_EXIT = { SIGHUP: 129, SIGINT: 130, SIGPIPE: 141, SIGTERM: 143 } as const;

/**
 * An error of the command line itself (not of a stream): an output that exists, a terminal
 * where data would go, a usage mistake. `code` is errno-like, like MigrationError's.
 */
export class CliError extends Error {
  readonly code: string;
  readonly exitCode: number;
  readonly hint: string | undefined;
  constructor(code: string, message: string, options: { exitCode?: number; hint?: string } = {}) {
    super(message);
    this.name = "CliError";
    this.code = code;
    this.exitCode = options.exitCode ?? EXIT.usage;
    this.hint = options.hint;
  }
}

/** stdout was closed by its reader (`| head`): the command ends quietly, like one killed by SIGPIPE. */
export class BrokenPipe extends Error {
  constructor() {
    super("stdout closed by its reader");
    this.name = "BrokenPipe";
  }
}

/** An error the command already put in its --json report: main.ts prints only its text. */
export class Reported extends Error {
  readonly error: unknown;
  constructor(error: unknown) {
    super(error instanceof Error ? error.message : String(error));
    this.name = "Reported";
    this.error = error;
  }
}

/** The exit code for an error: the CLI contract (README, "Command line"; docs/ARCHITECTURE.md, "Design rules"). */
export function exitCodeFor(error: unknown): number {
  if (error instanceof Reported) return exitCodeFor(error.error);
  if (error instanceof CliError) return error.exitCode;
  if (error instanceof BrokenPipe) return SIGNAL_EXIT.SIGPIPE;
  if (error instanceof MigrationError) {
    switch (error.code) {
      case "EBADMSG":
      case "ENODATA":
      case "E2BIG":
        return EXIT.corrupt;
      case "EPROTONOSUPPORT":
      case "ENODEV":
      case "ESTALE":
        return EXIT.incompatible;
      case "EINVAL":
        return EXIT.usage;
      case "ECANCELED":
        return SIGNAL_EXIT.SIGINT;
      default:
        return EXIT.io;
    }
  }
  return EXIT.io;
}

/** The known way out of an error, if there is one (one line, without the "hint: " prefix). */
export function hintFor(error: unknown): string | undefined {
  if (error instanceof Reported) return hintFor(error.error);
  if (error instanceof CliError) return error.hint;
  if (!(error instanceof MigrationError)) return undefined;
  const message = error.message;
  if (error.code === "E2BIG") {
    const record = /records of up to (\d+) bytes/.exec(message);
    if (record) return `if you trust this stream, accept its records with --max-record ${sizeFlag(Number(record[1]))}`;
    const state = /state of (\d+) bytes exceeds/.exec(message);
    if (state) return `if you trust this stream, accept its state with --max-state ${sizeFlag(Number(state[1]))}`;
  }
  if (error.code === "ESTALE") {
    if (/base state is needed/.test(message)) {
      return "this is an incremental stream: give the snapshot it was made against with --base <snapshot> (or use migstream apply <base> <stream> -o <out>)";
    }
    return "migstream inspect <stream> shows the base digest this stream needs";
  }
  if (error.code === "ENODEV") {
    const ids = /stream is for device (".*"), expected (".*")/.exec(message);
    if (ids && /receiver refused/.test(message))
      return `the receiver expects device id ${ids[2]}: send with --device-id ${ids[2]}, or start receive without --device-id`;
    if (ids) return `the stream was made for device ${ids[1]}: read it where that device is expected, or drop --device-id to accept the stream's own`;
  }
  const tls = tlsFailure(error);
  if (tls) return tls.hint;
  if (error.code === "EIO") {
    const connect = /^cannot connect to (\S+?):(\d+): .*\b(ECONNREFUSED|ENOTFOUND|EAI_AGAIN|EHOSTUNREACH|ENETUNREACH)\b/.exec(message);
    if (connect?.[3] === "ECONNREFUSED")
      return `nothing is listening at ${connect[1]}:${connect[2]}: start migstream receive --listen ${connect[2]} there first, or check the host and port`;
    if (connect?.[3] === "ENOTFOUND" || connect?.[3] === "EAI_AGAIN") return `the host name ${connect[1]} does not resolve: check it, or give an address`;
    if (connect) return `no route to ${connect[1]}: check the address and the network`;
    if (/closed the connection without a verdict/.test(message)) {
      return context.tls === "certificates"
        ? "the receiver may have refused this sender's certificate (not signed by the CA it trusts): its own message names the cause"
        : context.tls === "psk"
          ? "the receiver may use another pre-shared key or no TLS: its own message names the cause"
          : "if the receiver uses TLS, give send the same TLS options (--tls-psk, or --tls-cert/--tls-key/--tls-ca)";
    }
  }
  // A value the command line could not use (a size, a timeout, a missing argument): a usage error.
  if (error.code === "EINVAL" && error.recordIndex === undefined && context.command) return `see migstream ${context.command} --help`;
  return undefined;
}

export interface ErrorJson {
  code: string;
  message: string;
  recordIndex: number | null;
  byteOffset: number | null;
  hint: string | null;
  exitCode: number;
}

/** "TLS handshake with H failed: <OpenSSL text>" said as its cause; the raw text only with --verbose. */
function tlsFailure(error: MigrationError): { message: string; hint: string } | undefined {
  const parts = /^(TLS handshake with \S+ failed): ([\s\S]*)$/.exec(error.message);
  const why = parts ? explainTls(parts[2]!, "sender") : undefined;
  if (!parts || !why) return undefined;
  return { message: `${parts[1]}: ${why.cause}${context.verbose ? ` (${parts[2]!.trim()})` : ""}`, hint: why.hint };
}

/** Problems with an input or output path, whichever command met them and however they were wrapped. */
const PATH_ERRNOS = new Set(["ENOENT", "EACCES", "EPERM", "EISDIR", "ENOTDIR", "ELOOP", "ENAMETOOLONG"]);

/** A path error (Node's own, or an EIO MigrationError around one) as one code and one message: `cannot open <path>: <why>`. */
function pathProblem(error: unknown): { code: string; message: string } | undefined {
  const direct = !(error instanceof MigrationError) && !(error instanceof CliError) ? error : undefined;
  const wrapped = error instanceof MigrationError && error.code === "EIO" ? error.cause : undefined;
  const system = (direct ?? wrapped) as NodeJS.ErrnoException | undefined;
  if (typeof system?.code !== "string" || !PATH_ERRNOS.has(system.code) || typeof system.path !== "string") return undefined;
  // Node's text: "ENOENT: no such file or directory, open 'vm.state'".
  const why = /^E[A-Z]+: ([^,]+)/.exec(system.message)?.[1] ?? system.code;
  // A wrapper said what it was doing ("cannot read keys.psk: <Node's text>"): keep that, with
  // Node's text shortened to the reason (the wrapper named the path as the user gave it).
  if (wrapped && error instanceof Error) return { code: system.code, message: error.message.replace(/E[A-Z]+: ([^,]+), \w+ '[^']*'/, "$1") };
  return { code: system.code, message: `cannot open ${system.path}: ${why}` };
}

/** The error object of the JSON schema (`{ "error": ErrorJson }`). */
export function errorJson(error: unknown): ErrorJson {
  if (error instanceof Reported) return errorJson(error.error);
  const path = pathProblem(error);
  if (path) return { ...path, recordIndex: null, byteOffset: null, hint: null, exitCode: EXIT.io };
  const isMigration = error instanceof MigrationError;
  const tls = isMigration ? tlsFailure(error) : undefined;
  if (isMigration && tls) return { code: error.code, message: tls.message, recordIndex: null, byteOffset: null, hint: tls.hint, exitCode: exitCodeFor(error) };
  // A system error from Node (a missing input, say) keeps its errno code: ENOENT says more than EIO.
  const errno = (error as NodeJS.ErrnoException | undefined)?.code;
  const systemCode = typeof errno === "string" && /^E[A-Z0-9]+$/.test(errno) ? errno : undefined;
  const message = error instanceof Error ? error.message : String(error);
  return {
    code: isMigration || error instanceof CliError ? error.code : (systemCode ?? "EIO"),
    message: systemCode !== undefined && !isMigration && !(error instanceof CliError) ? message.replace(`${systemCode}: `, "") : message,
    recordIndex: isMigration ? (error.recordIndex ?? null) : null,
    byteOffset: isMigration ? (error.byteOffset ?? null) : null,
    hint: hintFor(error) ?? null,
    exitCode: exitCodeFor(error),
  };
}

/** The lines for stderr: `migstream: <code>: <message>`, and `hint: …` when there is a way out. */
export function describeError(error: unknown): string {
  const e = errorJson(error);
  const where: string[] = [];
  if (e.recordIndex !== null) where.push(`record ${e.recordIndex}`);
  if (e.byteOffset !== null) where.push(`byte offset ${e.byteOffset}`);
  const suffix = where.length > 0 && !e.message.includes("byte") ? ` (${where.join(", ")})` : "";
  // A usage error's way out is where to read more ("see migstream encode --help"), said as such.
  const hint = e.hint === null ? "" : e.hint.startsWith("see migstream") ? `\n${e.hint}` : `\nhint: ${e.hint}`;
  return `migstream: ${e.code}: ${e.message}${suffix}${hint}`;
}

// ---------------------------------------------------------------------------------------------
// Reports

/** What main.ts needs to print a failure the way the running command prints its report. */
export const context: {
  command: string;
  json: boolean;
  dataOnStdout: boolean;
  /** --verbose: library text (OpenSSL's, say) beside the cause it was turned into. */
  verbose: boolean;
  /** The TLS kind of a send in progress, for hints about a receiver that hung up. */
  tls?: "psk" | "certificates" | undefined;
} = { command: "", json: false, dataOnStdout: false, verbose: false };

/** JSON text: bigints (digests) as 0x-prefixed 16-digit hex. */
export function toJson(value: unknown, pretty: boolean): string {
  return JSON.stringify(value, (_key, v: unknown) => (typeof v === "bigint" ? `0x${v.toString(16).padStart(16, "0")}` : v), pretty ? 2 : undefined);
}

/**
 * Prints a report: with --json one JSON document on stdout, or on stderr as one line (JSON Lines)
 * when stdout carries data; otherwise the text on stderr unless --quiet.
 */
export function report(value: Record<string, unknown>, text: string, options: { json?: boolean; quiet?: boolean; dataOnStdout?: boolean }): void {
  if (options.json) {
    const doc = { command: context.command, ...value };
    if (options.dataOnStdout) process.stderr.write(`${toJson(doc, false)}\n`);
    else process.stdout.write(`${toJson(doc, true)}\n`);
  } else if (!options.quiet) {
    process.stderr.write(text.endsWith("\n") ? text : `${text}\n`);
  }
}

/** A failure as the running command reports it: JSON (stdout, or stderr beside data) or text. */
export function reportFailure(error: unknown): void {
  if (error instanceof BrokenPipe) return;
  if (context.json && !(error instanceof Reported)) {
    const doc = toJson({ command: context.command, error: errorJson(error), maxRssBytes: peakRss() }, !context.dataOnStdout);
    (context.dataOnStdout ? process.stderr : process.stdout).write(`${doc}\n`);
  }
  // The text goes to stderr as well (with --json too): a person watching sees what happened.
  if (!context.json || !context.dataOnStdout) process.stderr.write(`${describeError(error)}\n`);
}

// ---------------------------------------------------------------------------------------------
// Inputs

let stdinClaimed: string | undefined;

/** "-" stands for stdin once per command; a terminal on stdin is refused rather than waited on. */
function claimStdin(what: string): void {
  if (stdinClaimed !== undefined) {
    throw new CliError("EINVAL", `stdin cannot be both the ${stdinClaimed} and the ${what}`, { hint: "give one of them as a file" });
  }
  stdinClaimed = what;
  if (process.stdin.isTTY) {
    throw new CliError("EINVAL", `stdin is a terminal: the ${what} should be piped in`, {
      hint: `redirect it, e.g. migstream ${context.command || "<command>"} ... < file (or give a file instead of -)`,
    });
  }
}

/** Stream bytes from a file or stdin ("-"). */
export function openSource(path: string, what = "stream"): AsyncIterable<Uint8Array> {
  if (path === "-") {
    claimStdin(what);
    return process.stdin;
  }
  // A regular file can also be read straight into the worker pool's memory (StreamFile).
  if (isRegularFile(path)) return new StreamFile(path);
  return createReadStream(path, { highWaterMark: 1 << 20 });
}

function isRegularFile(path: string): boolean {
  try {
    return statSync(path).isFile();
  } catch {
    // Missing or unreadable: the read stream reports it, as it always did.
    return false;
  }
}

/** Size of an input file (undefined for stdin or anything without a size): a progress total. */
export function inputSize(path: string): number | undefined {
  if (path === "-") return undefined;
  try {
    const stats = statSync(path);
    return stats.isFile() ? stats.size : undefined;
  } catch {
    return undefined;
  }
}

/**
 * A path for a snapshot given as a file or "-": stdin is spooled to a private temporary file
 * first (removed on every ending, signals included), so that it can be read with positional I/O.
 */
export async function snapshotPath(path: string, what = "snapshot"): Promise<{ path: string; cleanup: () => void }> {
  if (path !== "-") return { path, cleanup: () => undefined };
  claimStdin(what);
  const { path: spooled, cleanup } = privateTempFile("stdin.snapshot");
  try {
    await pipeline(process.stdin, createWriteStream(spooled, { mode: 0o600 }));
  } catch (error) {
    cleanup();
    throw error;
  }
  return { path: spooled, cleanup };
}

/** A file in a fresh private directory under $TMPDIR, removed by `cleanup` or on any signal. */
export function privateTempFile(name: string): { path: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), "migstream-"));
  return { path: join(dir, name), cleanup: onInterruptCleanup(() => rmSync(dir, { recursive: true, force: true })) };
}

// ---------------------------------------------------------------------------------------------
// Outputs

/**
 * Where output goes, decided before any work:
 * - `stdout`: "-" (refused on a terminal unless -f);
 * - `file`: a regular file, written to a temporary name and renamed when complete (an existing
 *   one needs -f, keeps its mode; new ones are 0600); a symlink's target is what gets replaced;
 * - `stream`: a character device, FIFO or socket, written through as it is (like gzip).
 */
export interface OutputPlan {
  kind: "stdout" | "file" | "stream";
  /** As given on the command line (for messages). */
  path: string;
  /** What is written: a symlink's target, or the path itself. */
  target: string;
  socket: boolean;
  /** -f: replace an existing file, and write binary data even to a terminal. */
  force: boolean;
}

const STDOUT_NAMES: ReadonlySet<string> = new Set(["/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"]);

function fstatIfAny(fd: number): Stats | undefined {
  try {
    return fstatSync(fd);
  } catch {
    return undefined;
  }
}

function statIfAny(path: string): Stats | undefined {
  try {
    return statSync(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new CliError((error as NodeJS.ErrnoException).code ?? "EIO", `cannot use ${path}: ${(error as Error).message}`, { exitCode: EXIT.io });
  }
}

/**
 * Checks an output before any work: refuses (exit 1, nothing touched) an existing file without
 * `force`, an output that is one of the inputs (even with `force`), a directory, and a missing
 * or unwritable directory (exit 4).
 */
export function planOutput(path: string, options: { force: boolean; inputs?: readonly (string | undefined)[]; flag?: string }): OutputPlan {
  const flag = options.flag ?? "-o";
  // /dev/stdout names this process's stdout, whatever it is (a pipe, a file the shell opened):
  // it is "-", not a path to resolve (its link leads to /proc/self/fd/1 and on to "pipe:[…]").
  if (STDOUT_NAMES.has(path)) path = "-";
  if (path === "-") {
    if (process.stdout.isTTY && !options.force) {
      throw new CliError("EINVAL", "refusing to write binary data to a terminal", { hint: "give -o FILE, pipe the output, or add -f to write it anyway" });
    }
    return { kind: "stdout", path, target: path, socket: false, force: options.force };
  }
  // A device, FIFO or socket reached through links (/dev/stderr, /dev/fd/N) is written through
  // as named: only regular files are resolved, to be replaced atomically.
  const followed = statIfAny(path);
  const target = followed && !followed.isFile() && !followed.isDirectory() ? path : resolveOutputPath(path);
  const stats = statIfAny(target);
  if (stats) {
    for (const input of options.inputs ?? []) {
      if (input === undefined) continue;
      // "-": stdin may be this very file (`decode - -o x.mig < x.mig`).
      const inputStats = input === "-" ? fstatIfAny(0) : statIfAny(input);
      if (inputStats && inputStats.dev === stats.dev && inputStats.ino === stats.ino) {
        throw new CliError("EINVAL", `output ${path} is also an input (${input === "-" ? "stdin" : input}): refusing to overwrite what is being read`);
      }
    }
    if (stats.isDirectory()) throw new CliError("EISDIR", `output ${path} is a directory`, { hint: `name a file in it, e.g. ${flag} ${join(path, "out")}` });
    if (stats.isFile()) {
      if (!options.force) throw new CliError("EEXIST", `output ${path} exists`, { hint: "add -f to replace it (it keeps its mode)" });
    } else if (!stats.isCharacterDevice() && !stats.isFIFO() && !stats.isSocket()) {
      throw new CliError("EINVAL", `output ${path} is neither a file, a device, a FIFO nor a socket`);
    }
    if (!stats.isFile()) return { kind: "stream", path, target, socket: stats.isSocket(), force: options.force };
  }
  const dir = dirname(target);
  const dirStats = statIfAny(dir);
  if (!dirStats) throw new CliError("ENOENT", `cannot write ${path}: directory ${dirname(path)} does not exist`, { exitCode: EXIT.io });
  if (!dirStats.isDirectory()) throw new CliError("ENOTDIR", `cannot write ${path}: ${dirname(path)} is not a directory`, { exitCode: EXIT.io });
  try {
    accessSync(dir, constants.W_OK);
  } catch {
    throw new CliError("EACCES", `cannot write ${path}: directory ${dirname(path)} is not writable`, { exitCode: EXIT.io });
  }
  return { kind: "file", path, target, socket: false, force: options.force };
}

/** A sequential output: a file written atomically, or a stream (stdout, device, FIFO, socket). */
export interface Output {
  readonly plan: OutputPlan;
  /**
   * Writes `chunk` after everything written before. `release`, if given, is called exactly
   * once, when the chunk's memory may be reused (a file: at once; a stream: once the system took
   * it), also when the write fails: a write that rejects has released its chunk already. A
   * write that resolved may not be in the output yet: see {@link written}.
   */
  write(chunk: Uint8Array, release?: () => void): Promise<void>;
  /**
   * Resolves once every chunk written so far is in the file or handed to the system; rejects
   * with the first failure. With the temporary file's path (files only), for a verification pass
   * before commit: the path comes only once the file holds everything.
   */
  written(): Promise<string | undefined>;
  /**
   * Starts writing what was written so far to disk, off this thread (files; a no-op for
   * streams), so that the flush runs beside whatever comes next (a verification pass) instead of
   * inside `commit`, which still makes sure of it (and fails if this flush did). Call after
   * {@link written}.
   */
  syncAhead(): Promise<void>;
  commit(): Promise<void>;
  abort(): void;
}

/** Opens a planned output. A FIFO's open waits (off the main thread) for its reader. */
export async function openOutput(plan: OutputPlan): Promise<Output> {
  if (plan.kind === "file") {
    const file = new AtomicFile(plan.target);
    let position = 0;
    // Written as they come. Writing off this thread, through Node's thread pool, was slower
    // here on one thread and on two (1133 against 1063 ms and 878 against 814 ms for a 1 GiB
    // encode, medians of 6; more chunk buffers in use at once, likely). A failure fails the
    // writes after it, `written` and commit.
    let failure: unknown;
    let syncFailure: unknown;
    const check = (): void => {
      if (failure !== undefined) throw failure;
    };
    return {
      plan,
      async write(chunk, release) {
        try {
          check();
          file.writeAt(chunk, position);
        } catch (error) {
          failure ??= error;
          throw error;
        } finally {
          // Written synchronously: done with the chunk whether or not it was written.
          release?.();
        }
        position += chunk.length;
      },
      async written() {
        check();
        return file.tempPath;
      },
      syncAhead() {
        return new Promise((resolve) =>
          fsync(file.fd, (error) => {
            // Reported by commit: the kernel reports a writeback error once per open file, so
            // commit's own fsync on this descriptor would not see it again.
            if (error) syncFailure ??= error;
            resolve();
          }),
        );
      },
      async commit() {
        check();
        if (syncFailure !== undefined) throw ioError(`cannot write ${plan.path}`, syncFailure, file.tempPath, plan.path);
        file.commit();
      },
      abort() {
        file.abort();
      },
    };
  }
  let sink: Writable;
  if (plan.kind === "stdout") {
    sink = process.stdout;
  } else if (plan.socket) {
    const socket = createConnection({ path: plan.target });
    await Promise.race([once(socket, "connect"), once(socket, "error").then(([e]) => Promise.reject(streamError(plan, e as Error)))]);
    sink = socket;
  } else {
    let handle: FileHandle;
    try {
      handle = await open(plan.target, "w");
    } catch (error) {
      throw streamError(plan, error as Error);
    }
    if (isatty(handle.fd) && !plan.force) {
      await handle.close();
      throw new CliError("EINVAL", `refusing to write binary data to a terminal (${plan.path})`, { hint: "add -f to write it anyway" });
    }
    sink = handle.createWriteStream();
  }
  return streamOutput(plan, sink);
}

function streamError(plan: OutputPlan, error: Error): Error {
  if ((error as NodeJS.ErrnoException).code === "EPIPE" && plan.kind === "stdout") return new BrokenPipe();
  const where = plan.kind === "stdout" ? "stdout" : plan.path;
  return new MigrationError("EIO", `cannot write ${where}: ${error.message}`, { cause: error });
}

function streamOutput(plan: OutputPlan, sink: Writable): Output {
  let failure: Error | undefined;
  const onError = (error: Error): void => {
    failure ??= error;
  };
  sink.on("error", onError);
  const check = (): void => {
    if (failure) throw streamError(plan, failure);
  };
  /** Resolves once everything written so far is handed to the system (or fails). */
  const flushed = (): Promise<void> =>
    new Promise((resolve) => {
      sink.write(new Uint8Array(0), (error) => {
        if (error) failure ??= error;
        resolve();
      });
    });
  return {
    plan,
    syncAhead: async () => undefined,
    written: async () => {
      await flushed();
      check();
      return undefined;
    },
    async write(chunk, release) {
      if (failure) {
        // Not taken: released at once, and the failure reported.
        release?.();
        throw streamError(plan, failure);
      }
      let ok = false;
      const taken = new Promise<void>((resolve) => {
        ok = sink.write(chunk, (error) => {
          if (error) failure ??= error;
          // Done with the chunk either way: a failed stream does not write it later.
          release?.();
          resolve();
        });
      });
      // A stream already destroyed (its peer hung up) emits no more events: nothing to wait for.
      if (!ok && !sink.destroyed) {
        await new Promise<void>((resolve) => {
          const done = (): void => {
            sink.off("drain", done);
            sink.off("error", done);
            sink.off("close", done);
            resolve();
          };
          sink.on("drain", done);
          sink.on("error", done);
          sink.on("close", done);
        });
      }
      if (failure) {
        // The system may still be reading the chunk (a write in flight when the peer hung up):
        // reject only once it is released, as promised. Node calls back every write it took.
        await taken;
        check();
      }
    },
    async commit() {
      await flushed();
      check();
      if (sink !== process.stdout) {
        await new Promise<void>((resolve) => sink.end(resolve));
        check();
      }
    },
    abort() {
      if (sink !== process.stdout) sink.destroy();
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Options shared by commands

/** The flags readerLimitOptions / readerOptions add. */
export interface ReaderFlags {
  deviceId?: string;
  maxState: string;
  maxRecord: string;
  maxPagesApplied?: string;
}

/** Decoder limits from the reader flags. */
export function readerLimits(flags: Pick<ReaderFlags, "maxState" | "maxRecord" | "maxPagesApplied">): {
  maxStateSize: number;
  maxRecordPayload: number;
  maxPagesApplied?: number;
} {
  return {
    maxStateSize: parseSize(flags.maxState),
    maxRecordPayload: parseSize(flags.maxRecord),
    ...(flags.maxPagesApplied !== undefined ? { maxPagesApplied: parsePageBudget(flags.maxPagesApplied) } : {}),
  };
}

/** --max-pages-applied: a whole number of pages, at least 1. */
function parsePageBudget(text: string): number {
  const n = Number(text);
  if (!/^\s*\d+\s*$/.test(text) || !Number.isSafeInteger(n) || n < 1) {
    throw new MigrationError("EINVAL", `invalid --max-pages-applied ${JSON.stringify(text)} (expected a whole number of pages, at least 1)`);
  }
  return n;
}

/** The options of every command that reads a stream: its limits, checked before allocation. */
export function readerLimitOptions(command: Command): Command {
  return command
    .option("--max-state <bytes>", "largest state accepted (checked before anything is allocated)", "1G")
    .option("--max-record <bytes>", "largest record payload accepted", "16M")
    .option(
      "--max-pages-applied <pages>",
      "most pages the stream may make the output write in all (one 4 KiB LZ4 record can write 1 MiB; default: the state's pages x (3 + rounds seen))",
    );
}

/** readerLimitOptions, plus the device compatibility id a stream must carry. */
export function readerOptions(command: Command, deviceIdHelp = "refuse streams for another device compatibility id"): Command {
  return readerLimitOptions(command.option("--device-id <id>", deviceIdHelp));
}

/** What -f and -o mean for every command that writes an output (for --help). */
export const OUTPUT_HELP = `
Outputs: a regular file is written to a temporary name beside it and renamed only when complete
and verified; an existing file is replaced only with -f and keeps its mode (new files are 0600);
a symlink is followed (its target is replaced, the link stays). Character devices, FIFOs and
sockets are written through as they are. An output that is also an input is refused, even with
-f. -f also allows binary data on a terminal. Temporaries left in the output's directory by a
killed migstream (.<output>.<pid>.<random>.migstream-tmp, no such process any more) are removed.`;

/** --no-progress (the line is also off with --json, --quiet, NO_PROGRESS, or no terminal). */
export function progressOption(command: Command): Command {
  return command.option("--no-progress", "no progress line on stderr (also: NO_PROGRESS=1)");
}
