// LZ4 compression, measured in one run on a mixed state (a quarter each of zero, repeated-byte,
// sparse and random 4 KiB pages, interleaved) and on random data: the block kernels against
// lz4-napi (native lz4_flex) and Buffer.copy; stream sizes against lz4-napi's block; and the
// encoder's time with compression on against without (the cost of trying on random data).
// Medians with their spread (median absolute deviation); nothing here is asserted.
import { compressSync, uncompressSync } from "lz4-napi";
import { Bench } from "tinybench";
import { allocate } from "../src/core/buffer.js";
import { core } from "../src/core/instance.js";
import { lz4Bound, lz4CompressBlock, lz4DecompressBlock } from "../src/core/lz4.js";
import { StreamEncoder } from "../src/codec/encoder.js";
import { encodeSnapshot } from "../src/codec/snapshot.js";
import { type BenchConfig, randomBytes, type Row, sizeName } from "./harness.js";

const PAGE = 4096;

/** The mixed state: zero, repeated-byte, sparse (a few bytes set) and random pages. */
export function mixedState(size: number, seed = 3): Uint8Array {
  const state = new Uint8Array(size);
  let x = seed;
  const next = (): number => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
  const pages = Math.ceil(size / PAGE);
  // A deterministic shuffle of exactly a quarter of each kind.
  const kinds = Array.from({ length: pages }, (_, i) => i % 4);
  for (let i = kinds.length - 1; i > 0; i--) {
    const j = next() % (i + 1);
    [kinds[i], kinds[j]] = [kinds[j]!, kinds[i]!];
  }
  kinds.forEach((kind, p) => {
    const page = state.subarray(p * PAGE, Math.min(size, (p + 1) * PAGE));
    if (kind === 1) page.fill(1 + (next() % 255));
    else if (kind === 2) for (let k = 0; k < 8; k++) page[next() % page.length] = next() & 0xff;
    // Seeds far apart on the xorshift cycle (consecutive outputs would make shifted copies).
    else if (kind === 3) randomBytes(page, Math.imul(next(), 0x9e3779b1) ^ (p * 0x85ebca77));
  });
  return state;
}

interface Timed {
  median: number;
  /** Median absolute deviation over the median, as a fraction. */
  spread: number;
}

async function time(tasks: Record<string, () => unknown>, config: BenchConfig): Promise<Map<string, Timed>> {
  const bench = new Bench({
    time: config.smoke ? 5 : 1500,
    warmupTime: config.smoke ? 1 : 200,
    iterations: config.smoke ? 1 : 7,
    warmupIterations: config.smoke ? 1 : 2,
    throws: true,
  });
  for (const [name, fn] of Object.entries(tasks)) bench.add(name, fn);
  await bench.run();
  const out = new Map<string, Timed>();
  for (const task of bench.tasks) {
    const r = task.result;
    if (r.state !== "completed") throw new Error(`benchmark task ${task.name} did not complete (${r.state})`);
    out.set(task.name, { median: r.latency.p50, spread: r.latency.p50 > 0 ? r.latency.mad / r.latency.p50 : 0 });
  }
  return out;
}

export async function compressionBenchmarks(size: number, config: BenchConfig): Promise<Row[]> {
  const rows: Row[] = [];
  const c = core();
  const lines: string[] = [];
  for (const [name, js] of [
    ["mixed", mixedState(size)],
    ["random", randomBytes(new Uint8Array(size), 11)],
  ] as const) {
    const input = allocate(size);
    input.bytes.set(js);
    const table = allocate(c.exports.lz4_table_size());
    const bound = lz4Bound(size);
    const packedBuf = allocate(bound);
    const output = allocate(size);
    // Touched once here, so no run measures first-touch page faults.
    packedBuf.bytes.fill(1);
    output.bytes.fill(1);
    const ours = lz4CompressBlock(input.bytes);
    packedBuf.bytes.set(ours);
    const napiBuffer = Buffer.from(js);
    const napiFramed = compressSync(napiBuffer);
    const copyTarget = Buffer.alloc(size, 1);
    const streamPlain = encodeSnapshot(input.bytes);
    const streamLz4 = encodeSnapshot(input.bytes, { compress: "lz4" });
    const reused = new Uint8Array(streamPlain.length + (1 << 20)).fill(1);
    const encodeInto = (compress: "none" | "lz4"): void => {
      let at = 0;
      const encoder = new StreamEncoder({ size, compress }, (view) => {
        reused.set(view, at);
        at += view.length;
      });
      encoder.writePages(0, 0, input.bytes);
      encoder.end();
    };
    const t = await time(
      {
        "Buffer.copy": () => napiBuffer.copy(copyTarget),
        "compress (wasm kernel, in core memory)": () => c.exports.lz4_compress(input.ptr, size, packedBuf.ptr, bound, table.ptr, 0),
        "lz4CompressBlock (API: copies in and out)": () => lz4CompressBlock(js),
        "lz4-napi compressSync": () => compressSync(napiBuffer),
        "decompress (wasm kernel, in core memory)": () => c.exports.lz4_decompress(packedBuf.ptr, ours.length, output.ptr, size),
        "lz4DecompressBlock (API: copies in and out)": () => lz4DecompressBlock(ours, size),
        "lz4-napi uncompressSync": () => uncompressSync(napiFramed),
        "encode stream, no compression": () => encodeInto("none"),
        "encode stream, compress lz4": () => encodeInto("lz4"),
      },
      config,
    );
    for (const b of [input, table, packedBuf, output]) b.free();
    const gbps = (task: string): number => size / (t.get(task)!.median / 1000) / 1e9;
    const copy = gbps("Buffer.copy");
    const add = (task: string, vs: Record<string, number>, target?: string): void => {
      const spread = t.get(task)!.spread;
      rows.push({
        section: "compression",
        size,
        task: `${name}: ${task} (±${(spread * 100).toFixed(1)}%)`,
        gbps: gbps(task),
        vsCopy: gbps(task) / copy,
        vs,
        ...(target ? { target } : {}),
      });
    };
    add("compress (wasm kernel, in core memory)", { napi: gbps("compress (wasm kernel, in core memory)") / gbps("lz4-napi compressSync") }, ">= 1.0x napi");
    add("lz4CompressBlock (API: copies in and out)", { napi: gbps("lz4CompressBlock (API: copies in and out)") / gbps("lz4-napi compressSync") });
    add("lz4-napi compressSync", {});
    add(
      "decompress (wasm kernel, in core memory)",
      { napi: gbps("decompress (wasm kernel, in core memory)") / gbps("lz4-napi uncompressSync") },
      ">= 1.0x napi",
    );
    add("lz4DecompressBlock (API: copies in and out)", { napi: gbps("lz4DecompressBlock (API: copies in and out)") / gbps("lz4-napi uncompressSync") });
    add("lz4-napi uncompressSync", {});
    add("encode stream, no compression", {});
    add(
      "encode stream, compress lz4",
      { "no compression": gbps("encode stream, compress lz4") / gbps("encode stream, no compression") },
      name === "random" ? ">= 0.87x no compression (at most 15% more time)" : undefined,
    );
    const napiBlock = napiFramed.length - 4;
    lines.push(
      `${name.padEnd(7)} ${sizeName(size)}: lz4 block ${pct(ours.length, size)} (lz4-napi ${pct(napiBlock, size)}, ${(ours.length / napiBlock).toFixed(3)}x; target <= 1.10x), ` +
        `stream with compress lz4 ${pct(streamLz4.length, size)} (${(streamLz4.length / napiBlock).toFixed(3)}x lz4-napi's block), without ${pct(streamPlain.length, size)}`,
    );
  }
  console.log(`\ncompression sizes (same run)\n${lines.join("\n")}`);
  return rows;
}

function pct(part: number, whole: number): string {
  return `${((part / whole) * 100).toFixed(1)}%`;
}
