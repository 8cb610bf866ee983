// The worker pool: the CLI with --jobs 2 against --jobs 1 on a mixed state (1 GiB by default),
// and the hash-tracking scan on a pool of 2 threads against the same kernel on one thread. Each pair runs
// interleaved, at least 3 times; rows give the ratio of medians (same run) and its spread (the
// lowest and highest ratio of runs paired in order). MIGSTREAM_BASELINE_CLI names another
// build's dist/cli/main.js (the branch point, say) to compare --jobs 1 with the path before
// the pool. The machine's load average is printed beside the rows: on a shared box it decides
// what 2 threads can get.
import { spawn, spawnSync } from "node:child_process";
import { closeSync, copyFileSync, mkdtempSync, openSync, rmSync, writeSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { WorkerPool } from "../src/core/pool/pool.js";
import { scanHashOnPool } from "../src/core/pool/scan.js";
import { type BenchConfig, randomBytes, type Row } from "./harness.js";

const cli = fileURLToPath(new URL("../dist/cli/main.js", import.meta.url));

interface Report {
  /** The command's own time (--json durationMs: from parsing its arguments to its result). */
  durationMs: number;
  maxRssBytes: number;
  /** CLI runs: from starting the process to its exit (Node's own start included). */
  wallMs?: number;
}

/**
 * Writes back what earlier runs left dirty, before a run is timed: otherwise a run pays for the
 * write-back of the one before (up to 2 GiB after two decodes at once), and which kind of run
 * follows which decides the ratio more than the runs do.
 */
function settleDisk(): void {
  spawnSync("sync");
}

function run(binary: string, args: string[]): Report {
  settleDisk();
  const started = performance.now();
  const result = spawnSync(process.execPath, [binary, ...args, "--json"], { encoding: "utf8", maxBuffer: 1 << 24 });
  const wallMs = performance.now() - started;
  if (result.status !== 0) throw new Error(`migstream ${args.join(" ")} failed (${result.status}): ${result.stderr}`);
  return { ...(JSON.parse(result.stdout) as Omit<Report, "wallMs">), wallMs };
}

/** Runs two migstream commands at once, as separate processes; resolves with the wall time of both. */
function concurrently(a: string[], b: string[]): Promise<Report> {
  settleDisk();
  const started = performance.now();
  const one = (args: string[]) =>
    new Promise<void>((resolve, reject) => {
      const child = spawn(process.execPath, [cli, ...args, "--json"], { stdio: ["ignore", "ignore", "pipe"] });
      let stderr = "";
      child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
      child.on("error", reject);
      child.on("exit", (code) => (code === 0 ? resolve() : reject(new Error(`migstream ${args.join(" ")} failed (${code}): ${stderr}`))));
    });
  return Promise.all([one(a), one(b)]).then(() => {
    const wallMs = performance.now() - started;
    return { durationMs: wallMs, maxRssBytes: 0, wallMs };
  });
}

const median = (values: number[]): number => {
  const s = [...values].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

/**
 * Runs `base` and `other` alternately `times` times; `ratio` is how many times faster `other`
 * is (median time of `base` over median time of `other`), `low`/`high` the same per pair.
 */
function pair(times: number, base: () => Report, other: () => Report): { ratio: number; low: number; high: number; base: Report[]; other: Report[] } {
  const a: Report[] = [];
  const b: Report[] = [];
  for (let i = 0; i < times; i++) {
    a.push(base());
    b.push(other());
  }
  const ratios = a.map((r, i) => r.durationMs / b[i]!.durationMs);
  const ms = (rs: Report[]) => median(rs.map((r) => r.durationMs));
  return { ratio: ms(a) / ms(b), low: Math.min(...ratios), high: Math.max(...ratios), base: a, other: b };
}

/**
 * {@link pair}, and a third run per round: two --jobs 1 processes at once on two copies of the
 * input. The same work twice on two cores with nothing shared but the machine (memory bandwidth,
 * page cache, disk): 2 x median(--jobs 1) / median(both at once) is the throughput two
 * independent one-thread runs get over one. A pair's time is known only from process start to
 * exit, so one process start (a single run's wall time less its durationMs, about 130 ms here;
 * the pair's two start at once, a core each) is taken off it and the ratio is on the basis of
 * the other columns, the commands' own durationMs. (Comparing a single run's durationMs with
 * the pair's wall time, as this once did, counted the start on one side only.) Not a strict
 * bound on one run with 2 threads (each process also flushes its own output to disk), but what
 * the machine gives perfectly parallel work of this kind.
 */
async function trio(
  times: number,
  base: () => Report,
  other: () => Report,
  both: () => Promise<Report>,
): Promise<ReturnType<typeof pair> & { ceiling: number }> {
  const a: Report[] = [];
  const b: Report[] = [];
  const c: Report[] = [];
  // One round first, not counted: it writes the outputs for the first time (fresh page cache
  // and file blocks cost far more on this VM than rewriting them).
  base();
  other();
  await both();
  // The order turns each round: whatever a run leaves behind (dirty pages being written back,
  // blocks being freed) falls on each kind of run in turn, not always on the same one.
  const kinds = [async () => a.push(base()), async () => b.push(other()), async () => c.push(await both())];
  for (let i = 0; i < times; i++) {
    for (let k = 0; k < kinds.length; k++) await kinds[(i + k) % kinds.length]!();
  }
  const ratios = a.map((r, i) => r.durationMs / b[i]!.durationMs);
  const ms = (rs: Report[]) => median(rs.map((r) => r.durationMs));
  const wall = (rs: Report[]) => median(rs.map((r) => r.wallMs!));
  // On the basis of the other columns (the commands' own durationMs): the pair's wall time less
  // one process start (both start at once, a core each), against two single runs' durationMs.
  const start = wall(a) - ms(a);
  return { ratio: ms(a) / ms(b), low: Math.min(...ratios), high: Math.max(...ratios), base: a, other: b, ceiling: (2 * ms(a)) / (wall(c) - start) };
}

/**
 * A mixed state: per 16 MiB, a quarter each of random, zero, text and patterned pages. The text
 * is words drawn at random from a small vocabulary (it compresses to about half, and LZ4 has
 * work to do on it, unlike on zero or patterned pages).
 */
function writeMixedState(path: string, size: number): void {
  const fd = openSync(path, "w");
  const piece = new Uint8Array(16 << 20);
  const quarter = piece.length / 4;
  const encoder = new TextEncoder();
  const vocabulary = (
    "device register block queue descriptor ring head tail doorbell interrupt vector page table entry " +
    "buffer address length status command completion submission virtqueue feature config offset size"
  )
    .split(" ")
    .map((w) => encoder.encode(`${w} `));
  let x = 0x9e3779b9;
  for (let at = 0, i = 0; at < size; at += piece.length, i++) {
    randomBytes(piece.subarray(0, quarter), i + 1);
    piece.fill(0, quarter, 2 * quarter);
    for (let b = 2 * quarter; b < 3 * quarter; ) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      const word = vocabulary[(x >>> 0) % vocabulary.length]!;
      const n = Math.min(word.length, 3 * quarter - b);
      piece.set(word.subarray(0, n), b);
      b += n;
    }
    for (let b = 3 * quarter; b < piece.length; b++) piece[b] = (b >> 8) & 0xff;
    writeSync(fd, piece, 0, Math.min(piece.length, size - at));
  }
  closeSync(fd);
}

const MiB = 1 << 20;

export async function jobsBenchmarks(size: number, config: BenchConfig): Promise<Row[]> {
  const times = config.smoke ? 1 : 5;
  const dir = mkdtempSync(join(tmpdir(), "migstream-bench-jobs-"));
  const rows: Row[] = [];
  const load = `load ${loadavg()[0]!.toFixed(1)}`;
  const row = (task: string, p: ReturnType<typeof pair> & { ceiling?: number }, against: string, target: string, extra: Record<string, number> = {}): Row => ({
    section: "jobs",
    size,
    task: `${task} (${load})`,
    gbps: size / (median(p.other.map((r) => r.durationMs)) / 1000) / 1e9,
    vsCopy: Number.NaN,
    vs: {
      [against]: p.ratio,
      "slowest pair": p.low,
      "fastest pair": p.high,
      ...(p.ceiling !== undefined ? { "ceiling (2 processes)": p.ceiling } : {}),
      ...extra,
    },
    target,
  });
  try {
    const state = join(dir, "state.bin");
    writeMixedState(state, size);
    const stream = join(dir, "state.mig");
    const out = (name: string) => join(dir, name);
    // Second copies, for the two processes of the ceiling runs.
    const stateB = out("state-b.bin");
    copyFileSync(state, stateB);
    // Every run writes a new output, as the first does: replacing the last run's (up to 1 GiB)
    // would free its blocks inside the timed commit, a cost of the bench's reuse that varies.
    const fresh = (...paths: string[]): void => {
      for (const path of paths) if (path) rmSync(path, { force: true });
    };
    const twice = (command: (input: string, output: string) => string[], inputs: [string, string], outputs: [string, string]) => () => {
      fresh(...outputs);
      return concurrently(command(inputs[0], outputs[0]), command(inputs[1], outputs[1]));
    };
    const encode =
      (jobs: number, binary = cli) =>
      () => {
        fresh(stream);
        return run(binary, ["encode", state, "-o", stream, "-f", "--compress", "lz4", ...(binary === cli ? ["--jobs", String(jobs)] : [])]);
      };
    const encodeArgs = (input: string, output: string) => ["encode", input, "-o", output, "-f", "--compress", "lz4", "--jobs", "1"];
    const e = await trio(times, encode(1), encode(2), twice(encodeArgs, [state, stateB], [out("ceiling-a.mig"), out("ceiling-b.mig")]));
    const rss = (rs: Report[]) => median(rs.map((r) => r.maxRssBytes)) / MiB;
    // What the second thread costs: all of the RSS --jobs 2 adds (the pool path's windows and
    // slots come with it), not that spread over both jobs.
    const rssAdded = rss(e.other) - rss(e.base);
    rows.push(row("CLI encode --compress lz4 --jobs 2 (encode + verify)", e, "jobs 1", ">= 1.7x jobs 1", { "peak RSS MiB": rss(e.other) }));
    rows.push({
      section: "jobs",
      size,
      task: `CLI encode --jobs 2: peak RSS the second thread adds over --jobs 1 (${load})`,
      gbps: Number.NaN,
      vsCopy: Number.NaN,
      vs: { "peak RSS MiB": rssAdded },
      target: "peak RSS <= 64 MiB",
    });
    const verify = (jobs: number) => () => run(cli, ["verify", stream, "--jobs", String(jobs)]);
    const streamB = out("state-b.mig");
    copyFileSync(stream, streamB);
    const v = await trio(
      times,
      verify(1),
      verify(2),
      twice((input) => ["verify", input, "--jobs", "1"], [stream, streamB], ["", ""]),
    );
    rows.push(row("CLI verify --jobs 2 (lz4 stream)", v, "jobs 1", ">= 1.6x jobs 1"));
    const decode = (jobs: number) => () => {
      fresh(out("decoded.bin"));
      return run(cli, ["decode", stream, "-o", out("decoded.bin"), "-f", "--jobs", String(jobs)]);
    };
    const decodeArgs = (input: string, output: string) => ["decode", input, "-o", output, "-f", "--jobs", "1"];
    const d = await trio(times, decode(1), decode(2), twice(decodeArgs, [stream, streamB], [out("decoded-a.bin"), out("decoded-b.bin")]));
    rows.push(row("CLI decode --jobs 2 (lz4 stream, to a file)", d, "jobs 1", ">= 1.6x jobs 1"));
    rows.push({
      section: "jobs",
      size,
      task: `CLI decode --jobs 2: peak RSS the second thread adds over --jobs 1 (${load})`,
      gbps: Number.NaN,
      vsCopy: Number.NaN,
      vs: { "peak RSS MiB": rss(d.other) - rss(d.base) },
      target: "peak RSS <= 64 MiB",
    });
    const baseline = process.env.MIGSTREAM_BASELINE_CLI;
    if (baseline) {
      const b = pair(times, encode(1, baseline), encode(1));
      rows.push(row("CLI encode --compress lz4 --jobs 1 vs the baseline build", b, "baseline", ">= 0.97x baseline"));
      const bv = pair(times, () => run(baseline, ["verify", stream]), verify(1));
      rows.push(row("CLI verify --jobs 1 vs the baseline build", bv, "baseline", ">= 0.97x baseline"));
    }
    rows.push(await hashScan(config.smoke ? size : Math.min(size, 1024 * MiB), times, load));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return rows;
}

/**
 * The hash scan of `size` bytes in pool memory: a pool of 2 threads (a worker and this one)
 * against the kernel on this thread alone.
 * Beside it, the ceiling: the zero scan over `size` bytes of zeros (a kernel that only reads,
 * every byte) on one thread and on the pool's two, the rate at which memory can be read at all;
 * a scan of data that does not fit in cache cannot go faster than that.
 */
async function hashScan(size: number, times: number, load: string): Promise<Row> {
  const pool = new WorkerPool(2);
  await pool.ready();
  const c = pool.core;
  const pageSize = 4096;
  const pages = size / pageSize;
  const data = c.alloc(size);
  const hashes = c.alloc(pages * 8);
  const bitmap = c.alloc(pages / 8);
  const zeros = c.alloc(size);
  try {
    c.u8.fill(0, zeros, zeros + size);
    const u8 = c.u8;
    randomBytes(u8.subarray(data, data + size), 5);
    const view = (ptr: number, n: number) => new Uint8Array(c.memory.buffer, ptr, n);
    const one = (): Report => {
      const t = performance.now();
      c.exports.scan_hash(data, size, pageSize, hashes, bitmap);
      return { durationMs: performance.now() - t, maxRssBytes: 0 };
    };
    const two = async (): Promise<Report> => {
      const t = performance.now();
      await scanHashOnPool(pool, view(data, size), pageSize, view(hashes, pages * 8), view(bitmap, pages / 8));
      return { durationMs: performance.now() - t, maxRssBytes: 0 };
    };
    const readOne = (): Report => {
      const t = performance.now();
      c.exports.scan_zero(zeros, size, pageSize, bitmap);
      return { durationMs: performance.now() - t, maxRssBytes: 0 };
    };
    const readTwo = async (): Promise<Report> => {
      const t = performance.now();
      // Cut as the hash scan is (16 ranges per thread): with two halves, the worker, which is
      // handed two tasks at a time, took both, and this thread none.
      const parts = 32;
      const part = size / parts;
      await pool.settle(
        Array.from({ length: parts }, (_, i) => pool.run([["scan_zero", zeros + i * part, part, pageSize, bitmap + (i * part) / pageSize / 8]])),
      );
      return { durationMs: performance.now() - t, maxRssBytes: 0 };
    };
    one();
    await two();
    readOne();
    await readTwo();
    const a: Report[] = [];
    const b: Report[] = [];
    const ra: Report[] = [];
    const rb: Report[] = [];
    for (let i = 0; i < Math.max(times, 5); i++) {
      a.push(one());
      b.push(await two());
      ra.push(readOne());
      rb.push(await readTwo());
    }
    const ratios = a.map((r, i) => r.durationMs / b[i]!.durationMs);
    return {
      section: "jobs",
      size,
      task: `hash-tracking scan, 2 threads (${load})`,
      gbps: size / (median(b.map((r) => r.durationMs)) / 1000) / 1e9,
      vsCopy: Number.NaN,
      vs: {
        "jobs 1": median(a.map((r) => r.durationMs)) / median(b.map((r) => r.durationMs)),
        "slowest pair": Math.min(...ratios),
        "fastest pair": Math.max(...ratios),
        // A scan reads every byte once: it cannot beat the memory's read rate. So the most 2
        // threads can gain is that rate over the one-thread scan's.
        "ceiling (2-thread read rate / 1-thread scan)": median(a.map((r) => r.durationMs)) / median(rb.map((r) => r.durationMs)),
        "1-thread scan GB/s": size / (median(a.map((r) => r.durationMs)) / 1000) / 1e9,
        "1-thread read GB/s": size / (median(ra.map((r) => r.durationMs)) / 1000) / 1e9,
        "2-thread read GB/s": size / (median(rb.map((r) => r.durationMs)) / 1000) / 1e9,
      },
      target: ">= 1.7x jobs 1",
    };
  } finally {
    c.free(data);
    c.free(hashes);
    c.free(bitmap);
    c.free(zeros);
    pool.close();
  }
}
