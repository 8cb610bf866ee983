// Pre-copy round cost with explicit dirty tracking: a round where 1% of the pages are dirty
// against a full round, on one device (target: at most 3% of a full round's cost). And live
// migration between processes, each against its baseline measured in the same run:
// send/receive of a snapshot against a plain TCP file copy, the demo against a raw loopback
// socket, and the peak RSS of both ends for a 1 GiB snapshot.
import { type ChildProcess, spawn } from "node:child_process";
import { closeSync, mkdtempSync, openSync, rmSync, writeSync } from "node:fs";
import { createServer, connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { StreamEncoder } from "../src/codec/encoder.js";
import { allocate } from "../src/core/buffer.js";
import { core } from "../src/core/instance.js";
import { DeviceModel } from "../src/device/device-model.js";
import { type BenchConfig, measure, randomBytes, type Row } from "./harness.js";

export async function liveBenchmarks(size: number, config: BenchConfig): Promise<Row[]> {
  const pageSize = 4096;
  const device = new DeviceModel({ regions: [{ name: "ram", size }], pageSize, tracking: "explicit" });
  randomBytes(device.view(0), 7);
  const pages = Math.ceil(size / pageSize);
  // 1% of the pages, spread out, marked the way a workload's writes mark them.
  const dirty = allocate(Math.ceil(pages / 8));
  const step = 100;
  for (let p = 0; p < pages; p += step) core().exports.bitmap_set_range(dirty.ptr, p, 1);
  const encoder = new StreamEncoder({ regions: device.layout, pageSize }, () => undefined);

  const results = await measure(
    size,
    {
      "full round (every page)": () => encoder.writePages(0, 0, device.view(0)),
      "round with 1% of pages dirty (explicit tracking)": () => encoder.writePages(0, 0, device.view(0), { dirty: dirty.bytes }),
    },
    config,
  );
  encoder.abort();
  dirty.free();
  device.free();
  const full = results.get("full round (every page)")!.bytesPerSecond;
  const sparse = results.get("round with 1% of pages dirty (explicit tracking)")!.bytesPerSecond;
  const copy = results.get("Buffer.copy")!.bytesPerSecond;
  // Throughputs are per device byte: cost ratio = full / sparse.
  return [
    { section: "live", size, task: "full round (every page)", gbps: full / 1e9, vsCopy: full / copy },
    {
      section: "live",
      size,
      task: "round with 1% of pages dirty (explicit tracking)",
      gbps: sparse / 1e9,
      vsCopy: sparse / copy,
      vs: { "cost of full": full / sparse },
      target: "cost <= 0.03 of a full round",
    },
  ];
}

// ---------------------------------------------------------------------------------------------
// Live migration between processes

const cli = fileURLToPath(new URL("../dist/cli/main.js", import.meta.url));
const plainCopy = fileURLToPath(new URL("./plain-copy.mjs", import.meta.url));
const MiB = 1 << 20;

interface Exited {
  code: number | null;
  stdout: string;
  stderr: string;
}

export function exited(child: ChildProcess): Promise<Exited> {
  let stdout = "";
  let stderr = "";
  child.stdout?.on("data", (d: Buffer) => (stdout += d.toString()));
  child.stderr?.on("data", (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve) => child.on("close", (code) => resolve({ code, stdout, stderr })));
}

/** Starts a receiver printing its port on stderr; resolves with the port and its exit. */
export function listening(args: string[], pattern: RegExp): Promise<{ port: number; done: Promise<Exited> }> {
  const child = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, NO_PROGRESS: "1" } });
  const done = exited(child);
  return new Promise((resolve, reject) => {
    let text = "";
    child.stderr!.on("data", (d: Buffer) => {
      text += d.toString();
      const match = pattern.exec(text);
      if (match) resolve({ port: Number(match[1]), done });
    });
    void done.then((r) => reject(new Error(`receiver exited before listening (${r.code}): ${r.stderr}`)));
  });
}

export function check(what: string, r: Exited): void {
  if (r.code !== 0) throw new Error(`${what} failed (${r.code}): ${r.stderr}`);
}

/** One send/receive of `snapshot`: ms from starting the sender to its exit (the OK), and both reports. */
async function migstreamTransfer(
  snapshot: string,
  output: string,
): Promise<{ ms: number; sender: { maxRssBytes: number }; receiver: { maxRssBytes: number } }> {
  const receiver = await listening([cli, "receive", "--listen", "0", "-o", output, "--json"], /listening on [^\s]+:(\d+)/);
  const started = performance.now();
  const sent = await exited(spawn(process.execPath, [cli, "send", snapshot, "--to", String(receiver.port), "--json"], { stdio: ["ignore", "pipe", "pipe"] }));
  const ms = performance.now() - started;
  const received = await receiver.done;
  check("migstream send", sent);
  check("migstream receive", received);
  return { ms, sender: JSON.parse(sent.stdout), receiver: JSON.parse(received.stdout) };
}

async function plainTransfer(snapshot: string, output: string): Promise<number> {
  const receiver = await listening([plainCopy, "receive", output], /listening (\d+)/);
  const started = performance.now();
  const sent = await exited(spawn(process.execPath, [plainCopy, "send", snapshot, String(receiver.port)], { stdio: ["ignore", "pipe", "pipe"] }));
  const ms = performance.now() - started;
  check("plain copy send", sent);
  check("plain copy receive", await receiver.done);
  return ms;
}

/** Bytes per second of one process pushing `bytes` through a loopback socket in 1 MiB writes. */
async function rawSocket(bytes: number): Promise<number> {
  const chunk = Buffer.alloc(MiB, 7);
  const server = createServer();
  const port = await new Promise<number>((resolve) => server.listen(0, "127.0.0.1", () => resolve((server.address() as { port: number }).port)));
  try {
    return await new Promise<number>((resolve, reject) => {
      let received = 0;
      let started = 0;
      server.on("connection", (socket) =>
        socket.on("data", (d: Buffer) => {
          received += d.length;
          if (received >= bytes) {
            resolve(bytes / ((performance.now() - started) / 1000));
            socket.destroy();
          }
        }),
      );
      const client = connect(port, "127.0.0.1", async () => {
        started = performance.now();
        for (let sent = 0; sent < bytes; sent += chunk.length) {
          if (!client.write(chunk)) await new Promise((r) => client.once("drain", r));
        }
        client.end();
      });
      client.on("error", reject);
    });
  } finally {
    server.close();
  }
}

export function writeSnapshot(path: string, size: number): void {
  // The mix of bench/cli.ts: mostly random pages, some zero stretches.
  const fd = openSync(path, "w");
  const piece = new Uint8Array(16 * MiB);
  for (let at = 0, i = 0; at < size; at += piece.length, i++) {
    randomBytes(piece, i + 1);
    if (i % 4 === 3) piece.fill(0, 0, piece.length / 2);
    writeSync(fd, piece, 0, Math.min(piece.length, size - at));
  }
  closeSync(fd);
}

export const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
export const spread = (xs: number[]): string => `${(Math.min(...xs) / 1000).toFixed(2)}-${(Math.max(...xs) / 1000).toFixed(2)} s`;

/**
 * send/receive of a snapshot between two processes against a plain TCP file copy of the same
 * file (runs alternate, so both see the same machine); the demo against a raw loopback socket;
 * peak RSS of both ends for a large snapshot. Medians with their spread.
 */
export async function liveMigrationBenchmarks(config: BenchConfig): Promise<Row[]> {
  const section = "live migration";
  const size = config.smoke ? 8 * MiB : 512 * MiB;
  const large = config.smoke ? 16 * MiB : 1024 * MiB;
  const runs = config.smoke ? 1 : 3;
  const dir = mkdtempSync(join(tmpdir(), "migstream-bench-live-"));
  try {
    const snapshot = join(dir, "state.bin");
    writeSnapshot(snapshot, size);
    const ours: number[] = [];
    const plain: number[] = [];
    for (let i = 0; i < runs; i++) {
      ours.push((await migstreamTransfer(snapshot, join(dir, "received.bin"))).ms);
      rmSync(join(dir, "received.bin"), { force: true });
      plain.push(await plainTransfer(snapshot, join(dir, "copied.bin")));
      rmSync(join(dir, "copied.bin"), { force: true });
    }
    const oursBps = size / (median(ours) / 1000);
    const plainBps = size / (median(plain) / 1000);

    const demoSize = config.smoke ? 16 * MiB : 256 * MiB;
    const demos: { throughput: number; bytes: number }[] = [];
    const raws: number[] = [];
    for (let i = 0; i < runs; i++) {
      const demo = await exited(spawn(process.execPath, [cli, "demo", "--size", String(demoSize), "--json"], { stdio: ["ignore", "pipe", "pipe"] }));
      check("migstream demo", demo);
      const report = JSON.parse(demo.stdout) as { throughput: number; bytes: number };
      demos.push(report);
      raws.push(await rawSocket(report.bytes));
    }
    const demoBps = median(demos.map((d) => d.throughput));
    const rawBps = median(raws);

    rmSync(snapshot);
    writeSnapshot(snapshot, large);
    const big = await migstreamTransfer(snapshot, join(dir, "received.bin"));
    const rss = (r: { maxRssBytes: number }): string => `${(r.maxRssBytes / MiB).toFixed(0)} MiB`;

    return [
      {
        section,
        size,
        task: `send/receive, two processes (median of ${runs}, ${spread(ours)})`,
        gbps: oursBps / 1e9,
        vsCopy: Number.NaN,
        vs: { "plain TCP file copy": oursBps / plainBps },
        target: ">= 0.6x plain TCP file copy",
      },
      { section, size, task: `plain TCP file copy, two processes (median of ${runs}, ${spread(plain)})`, gbps: plainBps / 1e9, vsCopy: Number.NaN },
      {
        section,
        size: demoSize,
        task: `demo (median of ${runs}, ${demos.map((d) => (d.throughput / MiB).toFixed(0)).join("/")} MiB/s)`,
        gbps: demoBps / 1e9,
        vsCopy: Number.NaN,
        vs: { "raw loopback socket": demoBps / rawBps },
        target: ">= 0.5x raw loopback socket",
      },
      { section, size: demoSize, task: `raw loopback socket, 1 MiB writes (median of ${runs})`, gbps: rawBps / 1e9, vsCopy: Number.NaN },
      {
        section,
        size: large,
        task: `send/receive peak RSS: sender ${rss(big.sender)}, receiver ${rss(big.receiver)}`,
        gbps: large / (big.ms / 1000) / 1e9,
        vsCopy: Number.NaN,
        // The larger of the two ends is what the target is checked against.
        vs: { "peak RSS MiB": Math.max(big.sender.maxRssBytes, big.receiver.maxRssBytes) / MiB },
        target: "peak RSS < 256 MiB",
      },
    ];
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
