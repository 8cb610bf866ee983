// What the browser test checks, the same on the main thread and in a module worker: the bundled
// `migstream` entry encodes, decodes, streams incrementally, refuses a corrupt stream, and how
// fast it does so. Returns plain data (it crosses postMessage) and never throws: a failure is
// reported as { error } so the test can tell a CompileError under a strict CSP from a bug.
import { MigrationError, createDecoder, createEncoder, decodeSnapshot, encodeSnapshot, xxh3 } from "./migstream.js";

/** Deterministic bytes with zero stretches, so raw and zero records both occur. */
function makeState(length, seed) {
  const out = new Uint8Array(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    if ((i >> 12) % 4 === 1) continue;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

function same(a, b) {
  return a.length === b.length && xxh3(a) === xxh3(b);
}

/** The state pushed through the push-style encoder and decoder in uneven pieces. */
function incremental(state) {
  const chunks = [];
  const encoder = createEncoder({ size: state.length, ondata: (chunk) => chunks.push(chunk.slice()) });
  for (let at = 0, step = 1000; at < state.length; at += step, step = step * 3 + 1) encoder.push(state.subarray(at, at + step));
  encoder.end();
  const decoder = createDecoder();
  for (const chunk of chunks) {
    for (let at = 0; at < chunk.length; at += 7777) decoder.push(chunk.subarray(at, at + 7777));
  }
  decoder.end();
  return { chunks: chunks.length, ok: same(decoder.result(), state) };
}

function corruptRefused(stream) {
  const damaged = stream.slice();
  damaged[damaged.length - 100] ^= 0x01;
  try {
    decodeSnapshot(damaged);
    return { refused: false };
  } catch (error) {
    return { refused: error instanceof MigrationError, code: error.code, recordIndex: error.recordIndex };
  }
}

/** Best of a few runs of encode and of decode over `size` bytes, in MB/s (10^6 bytes/s). */
function throughput(size) {
  const state = makeState(size, 7);
  let encodeMs = Infinity;
  let decodeMs = Infinity;
  let stream;
  for (let run = 0; run < 3; run++) {
    let t = performance.now();
    stream = encodeSnapshot(state);
    encodeMs = Math.min(encodeMs, performance.now() - t);
    t = performance.now();
    const back = decodeSnapshot(stream);
    decodeMs = Math.min(decodeMs, performance.now() - t);
    if (!same(back, state)) throw new Error("throughput round trip differs");
  }
  const mbps = (ms) => Math.round(size / 1e3 / ms);
  return { bytes: size, encodeMBps: mbps(encodeMs), decodeMBps: mbps(decodeMs) };
}

export function runSuite(where) {
  try {
    const state = makeState(1 << 20, 1);
    const stream = encodeSnapshot(state);
    const roundTrip = same(decodeSnapshot(stream), state);
    const next = state.slice();
    next[12345] ^= 0xff;
    const delta = encodeSnapshot(next, { base: state });
    const deltaOk = same(decodeSnapshot(delta, { base: state }), next);
    return {
      where,
      roundTrip,
      streamBytes: stream.length,
      delta: { ok: deltaOk, bytes: delta.length },
      incremental: incremental(makeState(3 << 20, 2)),
      corrupt: corruptRefused(stream),
      throughput: throughput(16 << 20),
    };
  } catch (error) {
    return { where, error: `${error?.name}: ${error?.message}` };
  }
}
