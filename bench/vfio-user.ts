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
import { STATE, TestClient } from "../test/node/vfio-user/client.js";
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

/** One stop-copy over vfio-user: ms from SET STOP_COPY to the end of the stream, and its bytes. */
async function migRead(path: string): Promise<{ ms: number; bytes: number }> {
  const client = await TestClient.connect(path);
  try {
    await client.version();
    const started = performance.now();
    await client.setState(STATE.STOP_COPY);
    let bytes = 0;
    for (;;) {
      const chunk = await client.migRead(MiB);
      bytes += chunk.length;
      if (chunk.length < MiB) break;
    }
    const ms = performance.now() - started;
    await client.setState(STATE.RUNNING);
    return { ms, bytes };
  } finally {
    await client.close();
  }
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;

export async function vfioUserBenchmarks(config: BenchConfig): Promise<Row[]> {
  const size = config.smoke ? 16 * MiB : 256 * MiB;
  const runs = config.smoke ? 1 : 5;
  const dir = mkdtempSync(join(tmpdir(), "migstream-bench-vfu-"));
  const server = await startChild([cli, "vfio-user", "--socket", join(dir, "dev.sock"), "--size", String(size)], /listening on /);
  try {
    // A first stop-copy warms the server up and gives the stream's length for the raw copy.
    const { bytes } = await migRead(join(dir, "dev.sock"));
    const raw = await startChild(["-e", RAW_SENDER, join(dir, "raw.sock"), String(bytes)], /ready/);
    const ratios: number[] = [];
    const ours: number[] = [];
    try {
      for (let i = 0; i < runs; i++) {
        const read = await migRead(join(dir, "dev.sock"));
        if (read.bytes !== bytes) throw new Error(`stop-copy stream of ${read.bytes} bytes, the first had ${bytes}`);
        const rawMs = await rawRead(join(dir, "raw.sock"), bytes);
        ours.push(read.ms);
        ratios.push(rawMs / read.ms);
      }
    } finally {
      await raw.stop();
    }
    const gbps = bytes / (median(ours) / 1000) / 1e9;
    return [
      {
        section: "vfio-user",
        size,
        task: `MIG_DATA_READ of a ${size / MiB} MiB device's stop-copy (${(bytes / MiB).toFixed(0)} MiB stream), 1 MiB reads`,
        gbps,
        vsCopy: Number.NaN,
        vs: { "raw UNIX socket": median(ratios), "raw min": Math.min(...ratios), "raw max": Math.max(...ratios) },
        target: ">= 0.5x raw UNIX socket",
      },
    ];
  } finally {
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}
