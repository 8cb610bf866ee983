// Driving the real QEMU 7.2 (qemu-system-x86_64) from tests and from the fixture script: a tiny
// TCG VM with no disk (or a boot sector that keeps dirtying memory), QMP over a unix socket,
// migration to a file, loading a file with -incoming, pmemsave.
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { createConnection, type Socket } from "node:net";
import { join } from "node:path";

export const QEMU_BINARY = "qemu-system-x86_64";

/** True when QEMU is installed here. */
export function qemuAvailable(): boolean {
  try {
    execFileSync(QEMU_BINARY, ["--version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

/**
 * Whether to run the tests against QEMU: they run when QEMU is installed; when it is absent they
 * are skipped with a message, unless MIGSTREAM_REQUIRE_QEMU=1 (CI), where its absence fails.
 */
export function qemuTestsEnabled(): boolean {
  if (qemuAvailable()) return true;
  if (process.env.MIGSTREAM_REQUIRE_QEMU === "1") throw new Error(`${QEMU_BINARY} is not installed, and MIGSTREAM_REQUIRE_QEMU=1 requires it`);
  console.warn(`skipping the tests against QEMU: ${QEMU_BINARY} is not installed (apt-get install qemu-system-x86)`);
  return false;
}

export interface VmOptions {
  dir: string;
  machine?: "pc" | "q35";
  memMiB?: number;
  /** Raw bytes put in guest RAM at `addr` by QEMU's generic loader. */
  loader?: { file: string; addr: number };
  /** A raw disk image to boot from (a boot sector that runs). */
  bootDisk?: string;
  /** Stay paused from the start (no BIOS run): memory is exactly what the loader put there. */
  paused?: boolean;
  /** `exec:` URI to load a stream from. */
  incoming?: string;
}

/** A running QEMU with its QMP socket. */
export class Vm {
  readonly child: ChildProcess;
  readonly #socketPath: string;
  #socket: Socket | undefined;
  #lines: string[] = [];
  #waiters: Array<() => void> = [];
  #buffer = "";
  #stderr = "";

  constructor(options: VmOptions, name = "vm") {
    this.#socketPath = join(options.dir, `${name}.qmp`);
    const args = [
      "-machine",
      options.machine ?? "pc",
      "-accel",
      "tcg",
      "-m",
      String(options.memMiB ?? 16),
      "-nodefaults",
      "-display",
      "none",
      "-serial",
      "none",
      "-qmp",
      `unix:${this.#socketPath},server=on,wait=off`,
    ];
    if (options.loader) args.push("-device", `loader,file=${options.loader.file},addr=0x${options.loader.addr.toString(16)},force-raw=on`);
    if (options.bootDisk) args.push("-drive", `file=${options.bootDisk},format=raw,if=ide`);
    if (options.paused || options.incoming) args.push("-S");
    if (options.incoming) args.push("-incoming", options.incoming);
    this.child = spawn(QEMU_BINARY, args, { stdio: ["ignore", "ignore", "pipe"] });
    this.child.stderr?.on("data", (d: Buffer) => (this.#stderr += d.toString()));
  }

  get stderr(): string {
    return this.#stderr;
  }

  /** Connects to QMP (the socket appears once QEMU is up) and enters command mode. */
  async connect(timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (this.child.exitCode !== null) throw new Error(`QEMU exited (${this.child.exitCode}): ${this.#stderr}`);
      if (existsSync(this.#socketPath)) {
        try {
          this.#socket = await new Promise<Socket>((resolve, reject) => {
            const s = createConnection(this.#socketPath, () => resolve(s));
            s.once("error", reject);
          });
          break;
        } catch {
          /* not listening yet */
        }
      }
      if (Date.now() > deadline) throw new Error(`QMP socket did not come up: ${this.#stderr}`);
      await sleep(20);
    }
    this.#socket.setEncoding("utf8");
    this.#socket.on("data", (d: string) => {
      this.#buffer += d;
      let nl = this.#buffer.indexOf("\n");
      while (nl >= 0) {
        this.#lines.push(this.#buffer.slice(0, nl));
        this.#buffer = this.#buffer.slice(nl + 1);
        nl = this.#buffer.indexOf("\n");
      }
      for (const w of this.#waiters.splice(0)) w();
    });
    await this.#reply(); // greeting
    await this.qmp("qmp_capabilities");
  }

  async #reply(): Promise<Record<string, unknown>> {
    const deadline = Date.now() + 60_000;
    for (;;) {
      const line = this.#lines.shift();
      if (line !== undefined) {
        const message = JSON.parse(line) as Record<string, unknown>;
        if ("event" in message) continue;
        return message;
      }
      if (Date.now() > deadline) throw new Error("no QMP reply within 60 s");
      await new Promise<void>((resolve) => {
        this.#waiters.push(resolve);
        setTimeout(resolve, 200);
      });
    }
  }

  /** One QMP command; its `return`, or an error with QEMU's message. */
  async qmp(execute: string, args?: Record<string, unknown>): Promise<unknown> {
    this.#socket!.write(`${JSON.stringify(args ? { execute, arguments: args } : { execute })}\n`);
    const reply = await this.#reply();
    if ("error" in reply) throw new Error(`QMP ${execute}: ${JSON.stringify(reply.error)}`);
    return reply.return;
  }

  /** Polls query-migrate until `completed` (or fails on `failed`). */
  async waitMigration(timeoutMs = 120_000): Promise<Record<string, unknown>> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const info = (await this.qmp("query-migrate")) as Record<string, unknown>;
      if (info.status === "completed") return info;
      if (info.status === "failed") throw new Error(`migration failed: ${JSON.stringify(info)} ${this.#stderr}`);
      if (Date.now() > deadline) throw new Error(`migration not completed within ${timeoutMs} ms: ${JSON.stringify(info)}`);
      await sleep(25);
    }
  }

  /** Migrates to `file` through `exec:cat`; returns query-migrate's final report. */
  async migrateTo(file: string): Promise<Record<string, unknown>> {
    await this.qmp("migrate", { uri: `exec:cat > ${file}` });
    return this.waitMigration();
  }

  /** Guest physical memory [addr, addr + size) into `file`. */
  async pmemsave(addr: number, size: number, file: string): Promise<void> {
    await this.qmp("pmemsave", { val: addr, size, filename: file });
  }

  async quit(): Promise<void> {
    if (this.child.exitCode !== null) return;
    const exited = new Promise<void>((resolve) => this.child.once("exit", () => resolve()));
    try {
      await this.qmp("quit");
    } catch {
      /* it may close the socket before answering */
    }
    const timer = setTimeout(() => this.child.kill("SIGKILL"), 10_000);
    await exited;
    clearTimeout(timer);
    this.#socket?.destroy();
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Starts a VM and connects to it. */
export async function startVm(options: VmOptions, name?: string): Promise<Vm> {
  const vm = new Vm(options, name);
  try {
    await vm.connect();
  } catch (error) {
    vm.child.kill("SIGKILL");
    throw error;
  }
  return vm;
}

/** Loads `stream` into a fresh paused VM (same machine and memory) and waits until it is in. */
export async function loadVm(options: Omit<VmOptions, "incoming" | "loader">, stream: string, name = "target"): Promise<Vm> {
  const vm = await startVm({ ...options, incoming: `exec:cat ${stream}` }, name);
  try {
    await vm.waitMigration();
  } catch (error) {
    await vm.quit();
    throw new Error(`QEMU did not load ${stream}: ${(error as Error).message}\n${vm.stderr}`);
  }
  return vm;
}

/**
 * Deterministic bytes for loader blobs (xorshift32): tests and fixtures agree on them without
 * storing them twice.
 */
export function patternBytes(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}
