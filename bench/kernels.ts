// Kernel throughput: XXH3-64, CRC32C, page scans and XBZRLE, each with its pure-TS reference
// and, for checksums, the libraries it must beat, over 4 KiB .. 64 MiB.
import { crc32c as nodeRsCrc32c } from "@node-rs/crc32";
import { createXXHash3 } from "hash-wasm";
import { allocate } from "../src/core/buffer.js";
import { core } from "../src/core/instance.js";
import { crc32c } from "../src/core/crc32c.js";
import { crc32cReference } from "../src/core/reference/crc32c.js";
import { scanDirtyReference, scanHashReference, scanZeroReference } from "../src/core/reference/scan.js";
import { xbzrleDecodeReference, xbzrleEncodeReference } from "../src/core/reference/xbzrle.js";
import { xxh3Reference } from "../src/core/reference/xxh3.js";
import { scanDirty, scanHash, scanZero } from "../src/core/scan.js";
import { xxh3 } from "../src/core/xxh3.js";
import { type BenchConfig, measure, randomBytes, ratio, type Row } from "./harness.js";

const PAGE = 4096;

export async function kernelBenchmarks(sizes: number[], config: BenchConfig): Promise<Row[]> {
  const rows: Row[] = [];
  const hashWasm = await createXXHash3();
  for (const size of sizes) {
    const big = size >= 64 << 20;
    const js = randomBytes(new Uint8Array(size), size);
    const data = allocate(size);
    data.bytes.set(js);
    const shadow = allocate(size);
    shadow.bytes.set(js);
    // Written explicitly: untouched memory reads from the kernel's shared zero page, which would
    // measure a cache, not DRAM.
    const zero = allocate(size);
    zero.bytes.fill(1).fill(0);
    const pages = Math.ceil(size / PAGE);
    const hashes = allocate(pages * 8);
    scanHash(data.bytes, PAGE, hashes.bytes);
    // XBZRLE input: the same pages with 8 small changed runs each (~2% of the bytes).
    const changed = allocate(size);
    changed.bytes.set(js);
    const cb = changed.bytes;
    for (let p = 0; p < size; p += PAGE) for (let r = 0; r < 8; r++) cb.fill(r + 1, p + r * 500, Math.min(p + r * 500 + 10, size));
    const deltaOut = allocate(PAGE + 64);
    const { xbzrle_encode: encode, xbzrle_decode: decode } = core().exports;
    // The deltas of every page, laid out for the decode rows (each applied onto a scratch page).
    const deltas: { at: number; length: number }[] = [];
    const deltaBuffer = allocate(size + 64);
    for (let p = 0, at = 0; p < size; p += PAGE) {
      const n = encode(data.ptr + p, changed.ptr + p, Math.min(PAGE, size - p), deltaBuffer.ptr + at, PAGE);
      deltas.push({ at, length: Math.max(n, 0) });
      at += Math.max(n, 0);
    }
    const jsDeltas = deltas.map((d) => deltaBuffer.bytes.slice(d.at, d.at + d.length));
    const target = allocate(size);
    target.bytes.set(js);
    // Its own copy: decoding rewrites the pages, and `js` is every other row's input.
    const jsTarget = js.slice();

    const results = await measure(
      size,
      {
        "xxh3 wasm (data in core memory)": () => xxh3(data.bytes),
        "xxh3 wasm (JS buffer, staged)": () => xxh3(js),
        "xxh3 TS reference": () => xxh3Reference(js),
        "hash-wasm xxhash3": () => {
          hashWasm.init();
          hashWasm.update(js);
          return hashWasm.digest("binary");
        },
        "crc32c wasm (data in core memory)": () => crc32c(data.bytes),
        "crc32c TS reference": () => crc32cReference(js),
        "@node-rs/crc32 crc32c": () => nodeRsCrc32c(js),
        "clean-page scan (shadow compare)": () => scanDirty(data.bytes, shadow.bytes, PAGE),
        "clean-page scan TS reference": () => scanDirtyReference(js, js, PAGE, false),
        "zero-page scan": () => scanZero(zero.bytes, PAGE),
        "zero-page scan TS reference": () => scanZeroReference(new Uint8Array(size), PAGE),
        "per-page hash scan (0% dirty)": () => scanHash(data.bytes, PAGE, hashes.bytes),
        "per-page hash scan TS reference": () => scanHashReference(js, PAGE, new Uint8Array(pages * 8)),
        "XBZRLE encode, sparse changes (wasm)": () => {
          const base = data.ptr;
          const next = changed.ptr;
          const out = deltaOut.ptr;
          for (let p = 0; p < size; p += PAGE) encode(base + p, next + p, Math.min(PAGE, size - p), out, PAGE);
        },
        "XBZRLE decode, sparse changes (wasm)": () => {
          const base = target.ptr;
          const source = deltaBuffer.ptr;
          for (let i = 0; i < deltas.length; i++) decode(source + deltas[i]!.at, deltas[i]!.length, base + i * PAGE, Math.min(PAGE, size - i * PAGE));
        },
        "XBZRLE decode TS reference": () => {
          const t = jsTarget;
          for (let i = 0; i < jsDeltas.length; i++) xbzrleDecodeReference(jsDeltas[i]!, t.subarray(i * PAGE, i * PAGE + PAGE));
        },
        "XBZRLE encode TS reference": () => {
          const b = js;
          const n = changed.bytes;
          for (let p = 0; p < size; p += PAGE) xbzrleEncodeReference(b.subarray(p, p + PAGE), n.subarray(p, p + PAGE));
        },
      },
      config,
    );
    const gb = (task: string): number => results.get(task)!.bytesPerSecond / 1e9;
    const row = (task: string, vs: Record<string, string>, target?: string): Row => ({
      section: "kernels",
      size,
      task,
      gbps: gb(task),
      vsCopy: ratio(results, task, "Buffer.copy"),
      vs: Object.fromEntries(
        Object.entries(vs)
          .filter(([, t]) => results.has(t))
          .map(([name, t]) => [name, ratio(results, task, t)]),
      ),
      ...(target && big ? { target } : {}),
    });
    rows.push(
      row("xxh3 wasm (data in core memory)", { "TS ref": "xxh3 TS reference", "hash-wasm": "hash-wasm xxhash3" }, ">= 1.4x copy, >= 3x hash-wasm"),
      row("xxh3 wasm (JS buffer, staged)", { "TS ref": "xxh3 TS reference", "hash-wasm": "hash-wasm xxhash3" }),
      row("crc32c wasm (data in core memory)", { "TS ref": "crc32c TS reference", "@node-rs": "@node-rs/crc32 crc32c" }),
      row("clean-page scan (shadow compare)", { "TS ref": "clean-page scan TS reference" }, ">= 1.1x copy"),
      row("zero-page scan", { "TS ref": "zero-page scan TS reference" }, ">= 2.3x copy"),
      row("per-page hash scan (0% dirty)", { "TS ref": "per-page hash scan TS reference" }),
      row("XBZRLE encode, sparse changes (wasm)", { "TS ref": "XBZRLE encode TS reference" }, ">= 0.8x copy"),
      row("XBZRLE decode, sparse changes (wasm)", { "TS ref": "XBZRLE decode TS reference" }),
    );
    for (const b of [data, shadow, zero, hashes, changed, deltaOut, deltaBuffer, target]) b.free();
  }
  return rows;
}
