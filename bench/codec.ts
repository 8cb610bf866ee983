// Codec throughput on a whole state (4 KiB pages): full encode of random data, decode + verify
// + apply, each against the pure-TS reference path.
import { allocate } from "../src/core/buffer.js";
import { StreamDecoder } from "../src/codec/decoder.js";
import { createEncoder, StreamEncoder } from "../src/codec/encoder.js";
import { MemoryTarget } from "../src/codec/memory-target.js";
import { encodeSnapshotReference } from "../src/codec/reference.js";
import { decodeSnapshot, encodeSnapshot } from "../src/codec/snapshot.js";
import { type BenchConfig, measure, randomBytes, ratio, type Row } from "./harness.js";

export async function codecBenchmarks(size: number, config: BenchConfig): Promise<Row[]> {
  const js = randomBytes(new Uint8Array(size), 42);
  const state = allocate(size);
  state.bytes.set(js);
  const jsStream = encodeSnapshot(js);
  const stream = allocate(jsStream.length);
  stream.bytes.set(jsStream);
  // Changed base for incremental encodes: 1 page in 100 differs by a few bytes.
  const base = allocate(size);
  base.bytes.set(js);
  for (let p = 0; p < size; p += 4096 * 100) base.bytes[p + 17]! ^= 0x5a;

  // A migration sends from buffers it reuses; a fresh 64 MiB array per call would mostly measure
  // the kernel's page faults, so the main row streams into one reused, pre-touched buffer.
  const reused = new Uint8Array(jsStream.length + (1 << 20)).fill(1);
  const encodeStreaming = (copyOut: boolean): void => {
    let at = 0;
    const encoder = new StreamEncoder({ size }, (view) => {
      if (copyOut) reused.set(view, at);
      at += view.length;
    });
    encoder.writePages(0, 0, state.bytes);
    encoder.end();
  };
  // The public encoder, as users have it: shared views copied into the reused buffer (as a
  // socket write or a file write would consume them), and the default copying mode.
  const encodePublic = (shared: boolean): void => {
    let at = 0;
    const encoder = createEncoder({
      size,
      shared,
      ondata: (chunk) => {
        if (shared) reused.set(chunk, at);
        at += chunk.length;
      },
    });
    encoder.writePages(0, 0, state.bytes);
    encoder.end();
  };
  const decodeInto = (): void => {
    const target = new MemoryTarget();
    const decoder = new StreamDecoder(target);
    decoder.push(stream.bytes, true);
    for (const region of target.take()) region.free();
  };
  const results = await measure(
    size,
    {
      "full encode, 100% dirty (wasm, stream copied to a JS buffer)": () => encodeStreaming(true),
      "full encode, 100% dirty (wasm, stream left in core memory)": () => encodeStreaming(false),
      "public createEncoder, shared views (copied to a JS buffer)": () => encodePublic(true),
      "public createEncoder, default (a fresh copy per chunk)": () => encodePublic(false),
      "encodeSnapshot one-shot (allocates its output)": () => encodeSnapshot(state.bytes),
      "encodeSnapshot one-shot, state in a JS buffer": () => encodeSnapshot(js),
      "full encode, 100% dirty (TS reference)": () => encodeSnapshotReference(js),
      "incremental encode, 1% pages changed (wasm)": () => encodeSnapshot(state.bytes, { base: base.bytes }),
      "decode + verify + apply (wasm, into core memory)": decodeInto,
      "decode + verify + apply (wasm, JS in and out)": () => decodeSnapshot(jsStream),
    },
    config,
  );
  for (const b of [state, stream, base]) b.free();
  const reference = "full encode, 100% dirty (TS reference)";
  const row = (task: string, target?: string, vsReference = false): Row => ({
    section: "codec",
    size,
    task,
    gbps: results.get(task)!.bytesPerSecond / 1e9,
    vsCopy: ratio(results, task, "Buffer.copy"),
    ...(vsReference ? { vs: { "TS ref": ratio(results, task, reference) } } : {}),
    ...(target ? { target } : {}),
  });
  return [
    row("full encode, 100% dirty (wasm, stream copied to a JS buffer)", ">= 0.40x copy (stretch 0.5x), >= 5x TS ref", true),
    row("full encode, 100% dirty (wasm, stream left in core memory)", undefined, true),
    row("public createEncoder, shared views (copied to a JS buffer)", ">= 0.35x copy"),
    row("public createEncoder, default (a fresh copy per chunk)"),
    row("encodeSnapshot one-shot (allocates its output)", undefined, true),
    row("encodeSnapshot one-shot, state in a JS buffer", undefined, true),
    row(reference),
    row("incremental encode, 1% pages changed (wasm)"),
    row("decode + verify + apply (wasm, into core memory)", ">= 0.40x copy"),
    row("decode + verify + apply (wasm, JS in and out)", "(one-shot: allocates and copies out its result)"),
  ];
}
