// Sweeps over damaged streams: every truncation of a small valid stream, and random mutations
// (bit flips, overwrites, records spliced, duplicated, removed, reordered, length fields
// rewritten). A damaged stream must be refused with a MigrationError of the corruption family,
// never decode to anything, never hang, and never leave the core unusable; only a mutation that
// changes nothing may decode, and then to exactly the original state.
import { fc, test } from "@fast-check/vitest";
import { beforeAll, describe, expect } from "vitest";
import { isCorruptionCode, MigrationError } from "../../src/core/errors.js";
import { core } from "../../src/core/instance.js";
import type { DecoderOptions } from "../../src/codec/decoder.js";
import { createEncoder } from "../../src/codec/encoder.js";
import { createDecoder, decodeSnapshot, encodeSnapshot } from "../../src/codec/snapshot.js";
import { concat, hex, OPTIONAL, referenceDecode, reframe, splitStream, StreamBuilder, Tag, xxh3 } from "./stream-builder.js";

// ---------------------------------------------------------------------------------------------
// Streams under test

const REGIONS = [
  { name: "ram", size: 300 },
  { name: "dev", size: 130 },
];
const PAGE = 64;

function makeState(seed: number): Uint8Array {
  const s = new Uint8Array(430);
  let x = seed;
  for (let i = 0; i < s.length; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    // Zero pages 2-3 of "ram" so the stream has ZERO records next to PAGES.
    s[i] = i >= 128 && i < 256 ? 0 : (x >>> 24) & 0xff;
  }
  return s;
}

interface Sample {
  name: string;
  stream: Uint8Array;
  state: Uint8Array;
  options: DecoderOptions;
}

/**
 * A full stream with every record kind the encoder writes: PAGES, ZERO, a ROUND, DELTA records
 * against pages sent earlier in the same stream, a second ROUND, CONFIG, END.
 */
function multiKind(checksum: "xxh3" | "crc32c"): Sample {
  const first = makeState(1);
  const last = first.slice();
  last[5] = last[5]! ^ 0x5a; // ram page 0: a delta
  last[301] = last[301]! ^ 0x11; // dev page 0: a delta
  last.fill(0, 384, 430); // dev page 1 (partial): zeroed
  const shadow = new Uint8Array(first.length);
  const out: Uint8Array[] = [];
  const encoder = createEncoder({ regions: REGIONS, pageSize: PAGE, maxRecordPayload: 2 * PAGE, checksum, ondata: (c) => out.push(c) });
  const write = (state: Uint8Array, first: boolean): void => {
    let at = 0;
    REGIONS.forEach((r, i) => {
      const options = first ? { delta: false, skipClean: false } : {};
      encoder.writePages(i, 0, state.subarray(at, at + r.size), { shadow: shadow.subarray(at, at + r.size), updateShadow: true, ...options });
      at += r.size;
    });
  };
  write(first, true);
  encoder.endRound(PAGE);
  write(last, false);
  encoder.endRound(0);
  encoder.writeConfig(Uint8Array.of(0xde, 0xad, 0xbe, 0xef));
  encoder.end();
  return { name: `full ${checksum}`, stream: concat(...out), state: last, options: {} };
}

/** An incremental stream (deltas against the base) with a config and an optional record. */
function incremental(): Sample {
  const base = makeState(2);
  const next = base.slice();
  next[10] = 1;
  next[70] = 2;
  next.fill(7, 260, 300);
  next[420] = 3;
  const encoded = encodeSnapshot(next, { regions: REGIONS, pageSize: PAGE, maxRecordPayload: 3 * PAGE, base, config: Uint8Array.of(9) });
  // Put an optional record of an unknown kind in the middle, as a 1.0 writer of its own might.
  const { header, records } = splitStream(encoded);
  const optional = new StreamBuilder({ regions: REGIONS });
  optional.record({ tag: 0x7e, flags: OPTIONAL, payload: Uint8Array.of(1, 2, 3, 4, 5) });
  const stream = reframe(header, [records[0]!.bytes, optional.records[0]!, ...records.slice(1).map((r) => r.bytes)], "xxh3");
  return { name: "incremental", stream, state: next, options: { base } };
}

let SAMPLES: Sample[] = [];

beforeAll(() => {
  SAMPLES = [multiKind("xxh3"), multiKind("crc32c"), incremental()];
  for (const s of SAMPLES) {
    // The samples are valid (per the reference reader and the codec) and have what we want.
    const ref = referenceDecode(s.stream, s.options.base);
    expect(hex(ref.state)).toBe(hex(s.state));
    expect(hex(decodeSnapshot(s.stream, s.options))).toBe(hex(s.state));
    expect(ref.config).toBeDefined();
  }
  const kinds = new Set(referenceDecode(SAMPLES[0]!.stream).records.map((r) => r.tag));
  expect([...kinds].sort()).toEqual([Tag.PAGES, Tag.ZERO, Tag.DELTA, Tag.CONFIG, Tag.ROUND, Tag.END].sort());
  expect(referenceDecode(SAMPLES[2]!.stream, SAMPLES[2]!.options.base).counts.skipped).toBe(1);
});

// ---------------------------------------------------------------------------------------------
// Helpers

type Outcome = { ok: true; state: Uint8Array } | { ok: false; error: MigrationError };

function outcome(fn: () => Uint8Array): Outcome {
  try {
    return { ok: true, state: fn() };
  } catch (error) {
    if (!(error instanceof MigrationError)) throw new Error(`not a MigrationError: ${String(error)}`, { cause: error });
    return { ok: false, error };
  }
}

const fieldsOf = (o: Outcome) =>
  o.ok ? { ok: true, state: hex(o.state) } : { ok: false, code: o.error.code, recordIndex: o.error.recordIndex, byteOffset: o.error.byteOffset };

function pushed(stream: Uint8Array, options: DecoderOptions, sizes: readonly number[]): Outcome {
  const decoder = createDecoder(options);
  const o = outcome(() => {
    let at = 0;
    let i = 0;
    while (at < stream.length) {
      const n = Math.max(1, sizes[i++ % sizes.length]!);
      decoder.push(stream.subarray(at, at + n));
      at += n;
    }
    decoder.end();
    return decoder.result();
  });
  if (!o.ok) expect(() => decoder.result()).toThrow(MigrationError); // no partial result
  return o;
}

/** Records that end at or before `n`. */
function recordsBefore(stream: Uint8Array, n: number): number {
  return splitStream(stream).records.filter((r) => r.at + r.bytes.length <= n).length;
}

// ---------------------------------------------------------------------------------------------

describe("truncation sweep", () => {
  test("every prefix of every sample is incomplete (ENODATA), naming the records read and where the data ended", () => {
    const c = core();
    const before = c.allocatedBytes;
    for (const sample of SAMPLES) {
      const { stream, options } = sample;
      const headerLength = splitStream(stream).header.length;
      for (let n = 0; n < stream.length; n++) {
        const prefix = stream.subarray(0, n);
        const o = outcome(() => decodeSnapshot(prefix, options));
        expect(fieldsOf(o), `${sample.name}, prefix ${n}`).toEqual({
          ok: false,
          code: "ENODATA",
          recordIndex: n < headerLength ? 0 : recordsBefore(stream, n),
          byteOffset: n,
        });
      }
      expect(hex(decodeSnapshot(stream, options))).toBe(hex(sample.state));
    }
    expect(c.allocatedBytes).toBe(before);
  });

  test("prefixes pushed one byte at a time fail the same way", () => {
    const { stream, options } = SAMPLES[2]!;
    for (let n = 0; n < stream.length; n += 7) {
      const prefix = stream.subarray(0, n);
      expect(fieldsOf(pushed(prefix, options, [1]))).toEqual(fieldsOf(outcome(() => decodeSnapshot(prefix, options))));
    }
  });

  test("a reader with a smaller header limit refuses as soon as it has the 16-byte prefix (E2BIG)", () => {
    const { stream } = SAMPLES[0]!;
    const headerLength = splitStream(stream).header.length;
    for (let n = 0; n < stream.length; n += n < 40 ? 1 : 23) {
      const o = outcome(() => decodeSnapshot(stream.subarray(0, n), { maxHeaderSize: headerLength - 1 }));
      expect(fieldsOf(o), `prefix ${n}`).toEqual(
        n < 16 ? { ok: false, code: "ENODATA", recordIndex: 0, byteOffset: n } : { ok: false, code: "E2BIG", recordIndex: 0, byteOffset: 12 },
      );
    }
  });
});

// ---------------------------------------------------------------------------------------------

type Mutation =
  | { kind: "flip"; at: number; bit: number }
  | { kind: "flips"; list: [number, number][] }
  | { kind: "overwrite"; at: number; bytes: Uint8Array }
  | { kind: "remove"; i: number }
  | { kind: "duplicate"; i: number; j: number }
  | { kind: "swap"; i: number; j: number }
  | { kind: "foreign"; i: number; j: number }
  | { kind: "length"; i: number; value: number }
  | { kind: "truncate-append"; at: number; bytes: Uint8Array }
  | { kind: "renumbered"; op: "remove" | "duplicate" | "swap"; i: number; j: number };

const index = fc.nat({ max: 1 << 30 });

const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant("flip" as const), at: index, bit: fc.integer({ min: 0, max: 7 }) }),
  fc.record({ kind: fc.constant("flips" as const), list: fc.array(fc.tuple(index, fc.integer({ min: 0, max: 7 })), { minLength: 2, maxLength: 6 }) }),
  fc.record({ kind: fc.constant("overwrite" as const), at: index, bytes: fc.uint8Array({ minLength: 1, maxLength: 9 }) }),
  fc.record({ kind: fc.constant("remove" as const), i: index }),
  fc.record({ kind: fc.constant("duplicate" as const), i: index, j: index }),
  fc.record({ kind: fc.constant("swap" as const), i: index, j: index }),
  fc.record({ kind: fc.constant("foreign" as const), i: index, j: index }),
  fc.record({
    kind: fc.constant("length" as const),
    i: index,
    value: fc.oneof(fc.integer({ min: 0, max: 0xffffffff }), fc.integer({ min: -8, max: 8 })),
  }),
  fc.record({ kind: fc.constant("truncate-append" as const), at: index, bytes: fc.uint8Array({ maxLength: 40 }) }),
  fc.record({
    kind: fc.constant("renumbered" as const),
    op: fc.constantFrom("remove" as const, "duplicate" as const, "swap" as const),
    i: index,
    j: index,
  }),
);

/** Applies `m` to a copy of `sample`'s stream (`other` provides foreign records). */
function apply(sample: Sample, other: Sample, m: Mutation): Uint8Array {
  const stream = sample.stream.slice();
  const { header, records } = splitStream(stream);
  const list = records.map((r) => r.bytes);
  const pick = (i: number, n = list.length): number => i % n;
  switch (m.kind) {
    case "flip":
      stream[pick(m.at, stream.length)] = stream[pick(m.at, stream.length)]! ^ (1 << m.bit);
      return stream;
    case "flips":
      for (const [at, bit] of m.list) stream[pick(at, stream.length)] = stream[pick(at, stream.length)]! ^ (1 << bit);
      return stream;
    case "overwrite":
      stream.set(m.bytes.subarray(0, stream.length - pick(m.at, stream.length)), pick(m.at, stream.length));
      return stream;
    case "remove":
      list.splice(pick(m.i), 1);
      return concat(header, ...list);
    case "duplicate":
      list.splice(pick(m.j, list.length + 1), 0, list[pick(m.i)]!);
      return concat(header, ...list);
    case "swap": {
      const i = pick(m.i);
      const j = pick(m.j);
      [list[i], list[j]] = [list[j]!, list[i]!];
      return concat(header, ...list);
    }
    case "foreign": {
      const foreign = splitStream(other.stream).records;
      list.splice(pick(m.j, list.length + 1), 0, foreign[m.i % foreign.length]!.bytes);
      return concat(header, ...list);
    }
    case "length": {
      const r = records[pick(m.i)]!;
      const view = new DataView(stream.buffer, stream.byteOffset + r.at + 4, 4);
      view.setUint32(0, m.value < 0 || m.value <= 8 ? (r.length + m.value) >>> 0 : m.value, true);
      return stream;
    }
    case "truncate-append":
      return concat(stream.subarray(0, pick(m.at, stream.length + 1)), m.bytes);
    case "renumbered": {
      // Everything made consistent again (sequence numbers, checksums, the END's record and byte
      // counts) except the digest, which only a writer that saw the whole stream can compute.
      const body = list.slice(0, -1);
      const end = splitStream(stream).records.at(-1)!;
      const digest = new DataView(end.payload.buffer, end.payload.byteOffset + 16, 8).getBigUint64(0, true);
      const i = pick(m.i, body.length);
      const j = pick(m.j, body.length);
      if (m.op === "remove") body.splice(i, 1);
      else if (m.op === "duplicate") body.splice(j, 0, body[i]!);
      else [body[i], body[j]] = [body[j]!, body[i]!];
      const alg = stream[20] === 2 ? "crc32c" : "xxh3";
      return reframe(header, body, alg, { digest });
    }
  }
}

/** The property every mutated stream satisfies; returns the outcome for further checks. */
function checkMutated(sample: Sample, mutated: Uint8Array): Outcome {
  const started = performance.now();
  const o = outcome(() => decodeSnapshot(mutated, sample.options));
  // No hang, no runaway (a small stream decodes in well under a millisecond; the bound only
  // has to hold on a loaded machine).
  expect(performance.now() - started).toBeLessThan(10_000);
  if (o.ok) {
    // Only a mutation that changed nothing may decode, and then to the original state.
    expect(hex(mutated)).toBe(hex(sample.stream));
    expect(hex(o.state)).toBe(hex(sample.state));
  } else {
    expect(isCorruptionCode(o.error.code), `${o.error.code}: ${o.error.message}`).toBe(true);
    expect(Number.isSafeInteger(o.error.recordIndex)).toBe(true);
    expect(Number.isSafeInteger(o.error.byteOffset)).toBe(true);
    expect(o.error.byteOffset!).toBeGreaterThanOrEqual(0);
    expect(o.error.byteOffset!).toBeLessThanOrEqual(mutated.length);
    expect(o.error.recordIndex!).toBeLessThanOrEqual(Math.ceil(mutated.length / 32));
  }
  return o;
}

describe("mutation sweep", () => {
  const sampleArb = fc.tuple(fc.integer({ min: 0, max: 2 }), fc.integer({ min: 0, max: 2 }));

  test.prop([sampleArb, mutationArb, fc.array(fc.integer({ min: 1, max: 50 }), { minLength: 1, maxLength: 8 })], { numRuns: 400 })(
    "a mutated stream is refused with a corruption error, the same whatever the chunking, or is unchanged",
    ([s, t], m, sizes) => {
      const c = core();
      const before = c.allocatedBytes;
      const sample = SAMPLES[s]!;
      const mutated = apply(sample, SAMPLES[t]!, m);
      const o = checkMutated(sample, mutated);
      expect(fieldsOf(pushed(mutated, sample.options, sizes))).toEqual(fieldsOf(o));
      // The reference reader agrees that the stream is bad (or the same).
      let refOk = true;
      try {
        referenceDecode(mutated, sample.options.base);
      } catch {
        refOk = false;
      }
      expect(refOk).toBe(o.ok);
      if (sample.options.base) expect(xxh3(sample.options.base)).toBe(xxh3(makeState(2)));
      expect(c.allocatedBytes).toBe(before);
    },
  );

  test.prop([sampleArb, mutationArb], { numRuns: 25 })("mutated streams pushed one byte at a time fail the same way", ([s, t], m) => {
    const sample = SAMPLES[s]!;
    const mutated = apply(sample, SAMPLES[t]!, m);
    const o = checkMutated(sample, mutated);
    expect(fieldsOf(pushed(mutated, sample.options, [1]))).toEqual(fieldsOf(o));
  });

  test("every single-bit flip of the multi-kind stream is detected", () => {
    const sample = SAMPLES[0]!;
    for (let at = 0; at < sample.stream.length; at++) {
      const mutated = sample.stream.slice();
      mutated[at] = mutated[at]! ^ (1 << (at % 8));
      const o = checkMutated(sample, mutated);
      expect(o.ok, `flip at ${at}`).toBe(false);
    }
  });

  test("length fields rewritten to every value around the real one are refused", () => {
    const sample = SAMPLES[1]!;
    for (const r of splitStream(sample.stream).records) {
      for (const value of [0, 1, r.length - 1, r.length + 1, r.length + 8, 127, 128, 129, 0x7fffffff, 0xffffffff]) {
        if (value === r.length) continue;
        const mutated = sample.stream.slice();
        new DataView(mutated.buffer).setUint32(r.at + 4, value >>> 0, true);
        const o = checkMutated(sample, mutated);
        expect(o.ok).toBe(false);
      }
    }
  });

  test("after all of that the same process still round-trips", () => {
    for (const sample of SAMPLES) {
      expect(hex(decodeSnapshot(sample.stream, sample.options))).toBe(hex(sample.state));
      const decoder = createDecoder(sample.options);
      for (let i = 0; i < sample.stream.length; i += 5) decoder.push(sample.stream.subarray(i, i + 5));
      decoder.end();
      expect(hex(decoder.result())).toBe(hex(sample.state));
    }
    const state = makeState(3);
    expect(hex(decodeSnapshot(encodeSnapshot(state, { regions: REGIONS, pageSize: PAGE, checksum: "crc32c" })))).toBe(hex(state));
  });
});
