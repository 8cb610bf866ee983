// vfio-user: MIG_DATA_READ throughput of a device served by `migstream vfio-user` (its own
// process), read by a client in this process until the end of the stop-copy stream, against a
// raw UNIX-socket copy of the same number of bytes from another process in the same run. Runs
// alternate, so both see the same machine; medians with their spread.
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { CMD, encodeMessage, STATE, TestClient } from "../test/node/vfio-user/client.js";
import type { BenchConfig, Row } from "./harness.js";

const cli = fileURLToPath(new URL("../dist/cli/main.js", import.meta.url));
const MiB = 1 << 20;

/** A child process ready once it printed `ready` on stderr; killed by the returned function. */
function startChild(args: string[], ready: RegExp): Promise<{ child: ChildProcess; stop: () => Promise<void> }> {
  const child = spawn(process.execPath, args, { stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, NO_PROGRESS: "1" } });
  const exited = new Promise<void>((resolve) => child.on("close", () => resolve()));
  return new Promise((resolve, reject) => {
    let text = "";
    child.stderr!.on("data", (d: Buffer) => {
      text += d.toString();
      if (ready.test(text)) resolve({ child, stop: () => (child.kill("SIGTERM"), exited) });
    });
    void exited.then(() => reject(new Error(`child exited before it was ready: ${text}`)));
  });
}

/** Serves `bytes` bytes (1 MiB writes from one buffer) to each client of a UNIX socket. */
const RAW_SENDER = `
const net = require("node:net");
const [path, total] = [process.argv[1], Number(process.argv[2])];
const chunk = Buffer.alloc(1 << 20, 7);
net.createServer((c) => {
  let left = total;
  const pump = () => {
    while (left > 0) {
      const n = Math.min(left, chunk.length);
      left -= n;
      if (!c.write(chunk.subarray(0, n))) return void c.once("drain", pump);
    }
    c.end();
  };
  pump();
}).listen(path, () => process.stderr.write("ready\\n"));
`;

/** ms to read everything a raw sender sends. */
function rawRead(path: string, bytes: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    let got = 0;
    const socket = connect(path);
    socket.on("data", (d: Buffer) => (got += d.length));
    socket.on("end", () => (got === bytes ? resolve(performance.now() - started) : reject(new Error(`raw copy: ${got} of ${bytes} bytes`))));
    socket.on("error", reject);
  });
}

/**
 * Replies to pipelined MIG_DATA_READs, taken as the raw copy takes its bytes: the data is
 * counted where it lies in the socket's chunks, never joined; only each reply's first 24 bytes
 * (header, argsz, size) are looked at.
 */
class DataReplies {
  #head = Buffer.alloc(0);
  #skip = 0;
  #size = 0;
  readonly sizes: number[] = [];
  #waiters: (() => void)[] = [];

  push(chunk: Buffer): void {
    let at = 0;
    while (at < chunk.length) {
      if (this.#skip > 0) {
        const take = Math.min(this.#skip, chunk.length - at);
        this.#skip -= take;
        at += take;
        if (this.#skip === 0) this.#done();
        continue;
      }
      const take = Math.min(24 - this.#head.length, chunk.length - at);
      this.#head = Buffer.concat([this.#head, chunk.subarray(at, at + take)]);
      at += take;
      if (this.#head.length < 24) return;
      if ((this.#head.readUInt32LE(8) & 0x20) !== 0) throw new Error(`MIG_DATA_READ failed: errno ${this.#head.readUInt32LE(12)}`);
      this.#skip = this.#head.readUInt32LE(4) - 24;
      this.#size = this.#head.readUInt32LE(20);
      this.#head = Buffer.alloc(0);
      if (this.#skip === 0) this.#done();
    }
  }

  /** A whole reply is in. */
  #done(): void {
    this.sizes.push(this.#size);
    for (const w of this.#waiters.splice(0)) w();
  }

  /** Resolves with the data size of reply `n` (counting from 0) once all of it arrived. */
  async reply(n: number): Promise<number> {
    while (this.sizes.length <= n) await new Promise<void>((resolve) => this.#waiters.push(resolve));
    return this.sizes[n]!;
  }
}

/**
 * One stop-copy over vfio-user: ms from SET STOP_COPY to the end of the stream, and its bytes.
 * `depth` MIG_DATA_READs of `request` bytes are kept in flight (the spec lets a client pipeline
 * commands; the server answers in order).
 */
async function migRead(path: string, depth: number, request = MiB): Promise<{ ms: number; bytes: number }> {
  const client = await TestClient.connect(path);
  try {
    await client.version();
    const started = performance.now();
    await client.setState(STATE.STOP_COPY);
    // From here on the socket carries only data replies: take them over from the client.
    const socket = client.socket;
    const listeners = socket.listeners("data");
    socket.removeAllListeners("data");
    const replies = new DataReplies();
    socket.on("data", (d: Buffer) => replies.push(d));
    const body = Buffer.alloc(8);
    body.writeUInt32LE(8 + request, 0);
    body.writeUInt32LE(request, 4);
    let sent = 0;
    const send = (): void => void socket.write(encodeMessage(sent++ & 0xffff, CMD.MIG_DATA_READ, body));
    for (let i = 0; i < depth; i++) send();
    let bytes = 0;
    for (let n = 0; ; n++) {
      const size = await replies.reply(n);
      bytes += size;
      // A short read is the end; reads already in flight then answer with nothing.
      if (size < request) break;
      send();
    }
    await replies.reply(sent - 1);
    const ms = performance.now() - started;
    socket.removeAllListeners("data");
    for (const l of listeners) socket.on("data", l as (d: Buffer) => void);
    await client.setState(STATE.RUNNING);
    return { ms, bytes };
  } finally {
    await client.close();
  }
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;

export async function vfioUserBenchmarks(config: BenchConfig): Promise<Row[]> {
  const size = config.smoke ? 16 * MiB : 256 * MiB;
  const runs = config.smoke ? 1 : 9;
  const dir = mkdtempSync(join(tmpdir(), "migstream-bench-vfu-"));
  const server = await startChild([cli, "vfio-user", "--socket", join(dir, "dev.sock"), "--size", String(size)], /listening on /);
  try {
    // A first stop-copy warms the server up and gives the stream's length for the raw copy.
    const { bytes } = await migRead(join(dir, "dev.sock"), 1);
    const raw = await startChild(["-e", RAW_SENDER, join(dir, "raw.sock"), String(bytes)], /ready/);
    // 1 MiB reads one at a time (the plain client), and four in flight.
    const shapes: [number, number][] = [
      [MiB, 1],
      [MiB, 4],
    ];
    const ratios = shapes.map((): number[] => []);
    const ours = shapes.map((): number[] => []);
    try {
      for (let i = 0; i < runs; i++) {
        for (const [d, [request, depth]] of shapes.entries()) {
          const read = await migRead(join(dir, "dev.sock"), depth, request);
          if (read.bytes !== bytes) throw new Error(`stop-copy stream of ${read.bytes} bytes, the first had ${bytes}`);
          const rawMs = await rawRead(join(dir, "raw.sock"), bytes);
          ours[d]!.push(read.ms);
          ratios[d]!.push(rawMs / read.ms);
        }
      }
    } finally {
      await raw.stop();
    }
    return shapes.map(([request, depth], d) => ({
      section: "vfio-user",
      size,
      task: `MIG_DATA_READ, ${size / MiB} MiB device (${(bytes / MiB).toFixed(0)} MiB stop-copy), ${request / 1024} KiB reads, ${depth} in flight`,
      gbps: bytes / (median(ours[d]!) / 1000) / 1e9,
      vsCopy: Number.NaN,
      vs: { "raw UNIX socket": median(ratios[d]!), "raw min": Math.min(...ratios[d]!), "raw max": Math.max(...ratios[d]!) },
      target: ">= 0.5x raw UNIX socket",
    }));
  } finally {
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}
