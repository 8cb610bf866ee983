import { fc, test } from "@fast-check/vitest";
import { describe, expect } from "vitest";
import { allocate } from "../../src/core/buffer.js";
import { MigrationError } from "../../src/core/errors.js";
import { core } from "../../src/core/instance.js";
import { xbzrleDecodeReference, xbzrleEncodeReference } from "../../src/core/reference/xbzrle.js";
import { xbzrleDecode, xbzrleEncode } from "../../src/core/xbzrle.js";

// ---------------------------------------------------------------------------------------------
// Helpers

/** Deterministic pseudo-random generator (xorshift32), so big pages stay cheap to build. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
}

function noise(length: number, seed: number): Uint8Array {
  const next = rng(seed);
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = next() & 0xff;
  return out;
}

const same = (a: Uint8Array, b: Uint8Array): boolean => Buffer.compare(a, b) === 0;
const hex = (a: Uint8Array | null): string | null => (a === null ? null : Buffer.from(a).toString("hex"));

type Mode = "identical" | "sparse" | "dense" | "random" | "long";
interface PairSpec {
  size: number;
  seed: number;
  mode: Mode;
  runs: number;
  maxRun: number;
  percent: number;
}

/** Old and new page built from a spec: the new page differs from the old one as `mode` says. */
function makePair({ size, seed, mode, runs, maxRun, percent }: PairSpec): [Uint8Array, Uint8Array] {
  const next = rng(seed ^ 0x5bd1e995);
  const oldPage = noise(size, seed);
  const newPage = oldPage.slice();
  // XOR with a non-zero value: the byte is guaranteed to differ.
  const change = (i: number): void => {
    newPage[i] = newPage[i]! ^ (1 + (next() % 255));
  };
  switch (mode) {
    case "identical":
      break;
    case "sparse":
    case "long":
      for (let r = 0; r < runs; r++) {
        const length = 1 + (next() % (mode === "long" ? Math.max(maxRun, 64) * 8 : maxRun));
        const start = next() % size;
        for (let i = start; i < Math.min(size, start + length); i++) change(i);
      }
      break;
    case "dense":
      for (let i = 0; i < size; i++) if (next() % 100 < percent) change(i);
      break;
    case "random":
      for (let i = 0; i < size; i++) newPage[i] = next() & 0xff;
      break;
  }
  return [oldPage, newPage];
}

const pageSize = (max: number): fc.Arbitrary<number> =>
  fc.oneof(
    fc.constantFrom(1, 2, 15, 16, 17, 63, 64, 65, 127, 128, 129, 4095, 4096, 4097, 8192).filter((n) => n <= max),
    fc.integer({ min: 1, max }),
  );

const pairSpec = (maxSize: number): fc.Arbitrary<PairSpec> =>
  fc.record({
    size: pageSize(maxSize),
    seed: fc.integer({ min: 1, max: 0x7fffffff }),
    mode: fc.constantFrom<Mode>("identical", "sparse", "sparse", "sparse", "dense", "random", "long"),
    runs: fc.integer({ min: 1, max: 24 }),
    maxRun: fc.constantFrom(1, 3, 8, 16, 17, 32, 64, 65, 200),
    percent: fc.integer({ min: 1, max: 90 }),
  });

/**
 * Independent check that `delta` is a well-formed, minimal encoding of old -> new: every length
 * is canonical ULEB128 (<= 0x3FFF), zrun 0 only first, nzrun >= 1, zruns cover equal bytes,
 * nzruns cover differing bytes and carry the new values, runs are maximal, and the omitted tail
 * is unchanged. Returns a description of the first violation, or null.
 */
function grammarViolation(delta: Uint8Array, oldPage: Uint8Array, newPage: Uint8Array): string | null {
  let i = 0;
  let pos = 0;
  const length = (): number | string => {
    const first = delta[i++];
    if (first === undefined) return `length missing at ${i - 1}`;
    if (first < 0x80) return first;
    const second = delta[i++];
    if (second === undefined || second >= 0x80) return `bad 2-byte length at ${i - 2}`;
    const value = (first & 0x7f) | (second << 7);
    return value < 0x80 ? `non-minimal length at ${i - 2}` : value;
  };
  while (i < delta.length) {
    const zrun = length();
    if (typeof zrun === "string") return zrun;
    if (zrun === 0 && pos !== 0) return `empty zrun at ${i - 1}`;
    for (let k = pos; k < pos + zrun; k++) if (k >= newPage.length || oldPage[k] !== newPage[k]) return `zrun covers a change at ${k}`;
    pos += zrun;
    const nzrun = length();
    if (typeof nzrun === "string") return nzrun;
    if (nzrun === 0) return `empty nzrun at ${i - 1}`;
    if (i + nzrun > delta.length) return `nzrun data truncated at ${i}`;
    for (let k = 0; k < nzrun; k++) {
      const at = pos + k;
      if (at >= newPage.length || oldPage[at] === newPage[at]) return `nzrun covers an unchanged byte at ${at}`;
      if (delta[i + k] !== newPage[at]) return `nzrun byte ${i + k} is not the new value`;
    }
    i += nzrun;
    pos += nzrun;
    if (pos < newPage.length && oldPage[pos] !== newPage[pos]) return `nzrun ending at ${pos} is not maximal`;
  }
  for (let k = pos; k < newPage.length; k++) if (oldPage[k] !== newPage[k]) return `omitted tail has a change at ${k}`;
  return null;
}

/** Encodes with the Wasm core and the reference, requires identical results, returns them. */
function encodeBoth(oldPage: Uint8Array, newPage: Uint8Array, limit?: number): Uint8Array | null {
  const wasm = xbzrleEncode(oldPage, newPage, limit);
  const reference = xbzrleEncodeReference(oldPage, newPage, limit);
  expect(hex(wasm)).toBe(hex(reference));
  return wasm;
}

type Outcome = { ok: true; page: Uint8Array } | { ok: false; offset: number | undefined; problem: string };

const PROBLEMS = ["truncated", "bad varint", "zero-length", "out of page bounds"] as const;

/** Runs a decoder on `page`; a rejection must be EINVAL and must leave the page as it was. */
function outcome(decode: () => void, page: Uint8Array): Outcome {
  const before = page.slice();
  try {
    decode();
    return { ok: true, page: page.slice() };
  } catch (error) {
    expect(error).toBeInstanceOf(MigrationError);
    const e = error as MigrationError;
    expect(e.code).toBe("EINVAL");
    expect(same(page, before)).toBe(true);
    expect(e.message).toContain(`at byte ${e.byteOffset}`);
    const problem = PROBLEMS.find((p) => e.message.includes(p));
    expect(problem, e.message).toBeDefined();
    return { ok: false, offset: e.byteOffset, problem: problem ?? "" };
  }
}

/**
 * Decodes `delta` onto copies of `page` with the reference, the Wasm core on a JS copy, and the
 * Wasm core on a core-resident copy at an odd offset with guard bytes around it. All must agree
 * (same page, or same problem at the same offset); the guard bytes must survive.
 */
function decodeAll(delta: Uint8Array, page: Uint8Array, shift = 3): Outcome {
  const reference = page.slice();
  const expected = outcome(() => xbzrleDecodeReference(delta, reference), reference);

  const staged = page.slice();
  expect(outcome(() => xbzrleDecode(delta, staged), staged)).toEqual(expected);

  const block = allocate(page.length + 64);
  try {
    const bytes = block.bytes;
    bytes.fill(0xa5);
    const resident = bytes.subarray(shift, shift + page.length);
    resident.set(page);
    expect(outcome(() => xbzrleDecode(delta, resident), resident)).toEqual(expected);
    const after = block.bytes;
    let guardsIntact = true;
    for (let k = 0; k < shift; k++) guardsIntact &&= after[k] === 0xa5;
    for (let k = shift + page.length; k < after.length; k++) guardsIntact &&= after[k] === 0xa5;
    expect(guardsIntact).toBe(true);
  } finally {
    block.free();
  }
  return expected;
}

function expectEinval(fn: () => unknown): MigrationError {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(MigrationError);
    expect((error as MigrationError).code).toBe("EINVAL");
    return error as MigrationError;
  }
  throw new Error("expected MigrationError EINVAL");
}

// ---------------------------------------------------------------------------------------------
// Golden encodings

describe("xbzrle golden encodings", () => {
  const zeros = (n: number): Uint8Array => new Uint8Array(n);
  const withBytes = (n: number, changes: Array<[number, number]>): Uint8Array => {
    const page = zeros(n);
    for (const [at, value] of changes) page[at] = value;
    return page;
  };
  const filled = (n: number, from: number, to: number, value: number): Uint8Array => zeros(n).fill(value, from, to);
  const expectDelta = (oldPage: Uint8Array, newPage: Uint8Array, expected: number[] | null, limit?: number): void => {
    const delta = encodeBoth(oldPage, newPage, limit);
    expect(hex(delta)).toBe(expected === null ? null : Buffer.from(expected).toString("hex"));
    if (delta !== null) {
      expect(grammarViolation(delta, oldPage, newPage)).toBeNull();
      const page = oldPage.slice();
      xbzrleDecode(delta, page);
      expect(same(page, newPage)).toBe(true);
    }
  };

  test("identical pages give an empty delta, whatever the limit", () => {
    const page = noise(4096, 1);
    expectDelta(page, page.slice(), []);
    expectDelta(page, page.slice(), [], 0);
    expectDelta(zeros(0), zeros(0), []);
  });

  test("one changed byte at the start, in the middle and at the end", () => {
    expectDelta(zeros(4096), withBytes(4096, [[0, 0xab]]), [0x00, 0x01, 0xab]);
    // 2048 = 0x800 -> 0x80 0x10
    expectDelta(zeros(4096), withBytes(4096, [[2048, 0xab]]), [0x80, 0x10, 0x01, 0xab]);
    // 4095 = 0xfff -> 0xff 0x1f
    expectDelta(zeros(4096), withBytes(4096, [[4095, 0xab]]), [0xff, 0x1f, 0x01, 0xab]);
  });

  test("new bytes are sent as they are, not XORed", () => {
    const oldPage = zeros(64).fill(0xf0);
    expectDelta(oldPage, oldPage.slice().fill(0x0f, 5, 7), [0x05, 0x02, 0x0f, 0x0f]);
  });

  test("several runs, each maximal, final unchanged run omitted", () => {
    const newPage = withBytes(300, [
      [1, 1],
      [2, 2],
      [10, 3],
      [200, 4],
    ]);
    expectDelta(zeros(300), newPage, [0x01, 0x02, 1, 2, 0x07, 0x01, 3, 0xbd, 0x01, 0x01, 4]);
  });

  test("runs of exactly 0x7F and 0x80 bytes (one- and two-byte lengths)", () => {
    const run7f = Array<number>(0x7f).fill(0x11);
    expectDelta(zeros(4096), filled(4096, 0x7f, 0xfe, 0x11), [0x7f, 0x7f, ...run7f]);
    const run80 = Array<number>(0x80).fill(0x22);
    expectDelta(zeros(4096), filled(4096, 0x80, 0x100, 0x22), [0x80, 0x01, 0x80, 0x01, ...run80]);
  });

  test("runs of exactly 0x3FFF bytes are the longest representable", () => {
    // zrun 0x3FFF -> 0xff 0x7f
    expectDelta(zeros(0x8000), withBytes(0x8000, [[0x3fff, 7]]), [0xff, 0x7f, 0x01, 0x07]);
    // nzrun 0x3FFF fits a limit of 3 + 0x3FFF but not the default limit (the page length 0x4000)
    const newPage = filled(0x4000, 0, 0x3fff, 0x33);
    const runData = Array<number>(0x3fff).fill(0x33);
    expectDelta(zeros(0x4000), newPage, [0x00, 0xff, 0x7f, ...runData], 0x3fff + 3);
    expectDelta(zeros(0x4000), newPage, null, 0x3fff + 2);
    expectDelta(zeros(0x4000), newPage, null);
  });

  test("a run longer than 0x3FFF on a large page is not encodable", () => {
    // zrun of 0x4000 before a change
    expectDelta(zeros(0x10000), withBytes(0x10000, [[0x4000, 1]]), null, 1 << 20);
    // nzrun of 0x4000
    expectDelta(zeros(0x10000), filled(0x10000, 100, 100 + 0x4000, 9), null, 1 << 20);
    // ... but a long unchanged tail is omitted, so it does not count
    expectDelta(zeros(0x10000), withBytes(0x10000, [[0, 5]]), [0x00, 0x01, 0x05]);
  });

  test("nzruns of 0x3FFF and 0x4000 bytes starting at every offset of a 64-byte block", () => {
    // The kernel finds run ends 16 and 64 bytes at a time; the length check must not depend on
    // where the run starts relative to those steps.
    for (let start = 0; start < 64; start++) {
      for (const length of [0x3fff, 0x4000]) {
        const newPage = filled(0x4100, start, start + length, 0x44);
        const delta = encodeBoth(zeros(0x4100), newPage, 1 << 16);
        expect(delta === null).toBe(length > 0x3fff);
      }
    }
  });

  test("the limit is the largest accepted delta length", () => {
    const newPage = withBytes(64, [
      [0, 1],
      [10, 2],
    ]);
    const delta = [0x00, 0x01, 1, 0x09, 0x01, 2];
    expectDelta(zeros(64), newPage, delta, 6);
    expectDelta(zeros(64), newPage, null, 5);
    expectDelta(zeros(64), newPage, null, 0);
    expectDelta(zeros(64), newPage, delta, Number.MAX_SAFE_INTEGER);
    // default limit = page length: a fully rewritten page never "compresses"
    expectDelta(zeros(4096), zeros(4096).fill(1), null);
  });

  test("the result is a fresh array outside core memory", () => {
    const delta = xbzrleEncode(zeros(64), withBytes(64, [[3, 3]]));
    expect(delta).not.toBeNull();
    expect(delta!.buffer).not.toBe(core().memory.buffer);
  });
});

describe("xbzrle argument validation", () => {
  test("pages of different lengths are EINVAL", () => {
    expectEinval(() => xbzrleEncode(new Uint8Array(4096), new Uint8Array(4095)));
    expect(() => xbzrleEncodeReference(new Uint8Array(3), new Uint8Array(4))).toThrow(MigrationError);
  });

  test.each([-1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 53])("limit %s is EINVAL", (limit) => {
    expectEinval(() => xbzrleEncode(new Uint8Array(16), new Uint8Array(16), limit));
  });

  test("non-Uint8Array arguments are EINVAL", () => {
    const bad = [new Uint16Array(4), [1, 2], "ab", null] as unknown as Uint8Array[];
    for (const value of bad) {
      expectEinval(() => xbzrleEncode(value, new Uint8Array(4)));
      expectEinval(() => xbzrleDecode(value, new Uint8Array(4)));
      expectEinval(() => xbzrleDecode(new Uint8Array(0), value));
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Random page pairs

describe("xbzrle round trips (Wasm vs reference)", () => {
  test.prop([pairSpec(8192)], { numRuns: 400 })("random page pairs, default limit", (spec) => {
    const [oldPage, newPage] = makePair(spec);
    const delta = encodeBoth(oldPage, newPage);
    if (delta === null) {
      // Null means too long for the page (or an unrepresentable run, impossible below 0x4000).
      const unlimited = xbzrleEncodeReference(oldPage, newPage, 3 * spec.size);
      expect(unlimited!.length).toBeGreaterThan(spec.size);
      return;
    }
    expect(delta.length).toBeLessThanOrEqual(spec.size);
    if (spec.mode === "identical") expect(delta.length).toBe(0);
    expect(grammarViolation(delta, oldPage, newPage)).toBeNull();
    const viaWasm = oldPage.slice();
    xbzrleDecode(delta, viaWasm);
    expect(same(viaWasm, newPage)).toBe(true);
    const viaReference = oldPage.slice();
    xbzrleDecodeReference(delta, viaReference);
    expect(same(viaReference, newPage)).toBe(true);
  });

  test.prop([pairSpec(4200), fc.nat()], { numRuns: 300 })("any limit gives the full delta or null", (spec, pick) => {
    const [oldPage, newPage] = makePair(spec);
    const full = encodeBoth(oldPage, newPage, 3 * spec.size);
    expect(full).not.toBeNull();
    const limit = pick % (2 * spec.size + 4);
    const limited = encodeBoth(oldPage, newPage, limit);
    if (full!.length <= limit) expect(hex(limited)).toBe(hex(full));
    else expect(limited).toBeNull();
  });

  test.prop([fc.integer({ min: 0x4001, max: 0x12000 }), fc.integer({ min: 1, max: 0x7fffffff }), fc.integer({ min: 1, max: 12 })], {
    numRuns: 25,
  })("large pages: null exactly when some emitted run exceeds 0x3FFF", (size, seed, runs) => {
    const [oldPage, newPage] = makePair({ size, seed, mode: "long", runs, maxRun: 2000, percent: 0 });
    const delta = encodeBoth(oldPage, newPage, 3 * size);
    // Work out from the page itself whether a run that must be written is too long.
    let tooLong = false;
    let i = 0;
    for (;;) {
      const zStart = i;
      while (i < size && oldPage[i] === newPage[i]) i++;
      if (i === size) break;
      const nStart = i;
      while (i < size && oldPage[i] !== newPage[i]) i++;
      if (nStart - zStart > 0x3fff || i - nStart > 0x3fff) tooLong = true;
    }
    expect(delta === null).toBe(tooLong);
    if (delta !== null) {
      expect(grammarViolation(delta, oldPage, newPage)).toBeNull();
      const page = oldPage.slice();
      xbzrleDecode(delta, page);
      expect(same(page, newPage)).toBe(true);
    }
  });

  test.prop([pairSpec(4200), fc.nat()], { numRuns: 150 })("raw kernel: returns <= limit and writes nothing past out + limit + 32", (spec, pick) => {
    const [oldPage, newPage] = makePair(spec);
    const limit = pick % (2 * spec.size + 4);
    const expected = xbzrleEncodeReference(oldPage, newPage, limit);
    const block = allocate(3 * spec.size + limit + 32 + 64);
    try {
      const k = core().exports;
      const base = block.ptr;
      const oldPtr = base + 1; // odd addresses on purpose
      const newPtr = oldPtr + spec.size;
      const outPtr = newPtr + spec.size + 1;
      const bytes = block.bytes;
      bytes.fill(0xa5);
      bytes.set(oldPage, oldPtr - base);
      bytes.set(newPage, newPtr - base);
      const n = k.xbzrle_encode(oldPtr, newPtr, spec.size, outPtr, limit);
      expect(n).toBe(expected === null ? -1 : expected.length);
      const after = block.bytes;
      if (expected !== null) expect(hex(after.subarray(outPtr - base, outPtr - base + n))).toBe(hex(expected));
      let untouched = true;
      for (let i = outPtr - base + limit + 32; i < after.length; i++) untouched &&= after[i] === 0xa5;
      expect(untouched).toBe(true);
      expect(same(after.subarray(oldPtr - base, newPtr - base), oldPage)).toBe(true);
      expect(same(after.subarray(newPtr - base, newPtr - base + spec.size), newPage)).toBe(true);
    } finally {
      block.free();
    }
  });

  test("typical 4 KiB pages: 8 small runs, dense changes, full rewrite", () => {
    for (let seed = 1; seed <= 50; seed++) {
      for (const mode of ["sparse", "dense", "random"] as const) {
        const [oldPage, newPage] = makePair({ size: 4096, seed, mode, runs: 8, maxRun: 16, percent: 30 });
        const delta = encodeBoth(oldPage, newPage);
        if (mode === "sparse") expect(delta).not.toBeNull();
        if (mode === "random") expect(delta).toBeNull();
        if (delta !== null) expect(grammarViolation(delta, oldPage, newPage)).toBeNull();
      }
    }
  });
});

describe("xbzrle input placement", () => {
  test.prop([pairSpec(5000), fc.integer({ min: 0, max: 31 }), fc.integer({ min: 0, max: 31 })], { numRuns: 120 })(
    "unaligned subarrays of larger JS buffers",
    (spec, shiftOld, shiftNew) => {
      const [oldPage, newPage] = makePair(spec);
      const expected = xbzrleEncodeReference(oldPage, newPage);
      const oldBacking = new Uint8Array(spec.size + 64).fill(0x5a);
      const newBacking = new Uint8Array(spec.size + 64).fill(0xa5);
      oldBacking.set(oldPage, shiftOld);
      newBacking.set(newPage, shiftNew);
      const oldView = oldBacking.subarray(shiftOld, shiftOld + spec.size);
      const newView = newBacking.subarray(shiftNew, shiftNew + spec.size);
      const delta = xbzrleEncode(oldView, newView);
      expect(hex(delta)).toBe(hex(expected));
      if (delta !== null) {
        const deltaBacking = new Uint8Array(delta.length + 40);
        deltaBacking.set(delta, shiftNew + 1);
        const result = decodeAll(deltaBacking.subarray(shiftNew + 1, shiftNew + 1 + delta.length), oldPage, shiftOld);
        expect(result.ok && same(result.page, newPage)).toBe(true);
      }
    },
  );

  test.prop([pairSpec(5000), fc.integer({ min: 0, max: 31 }), fc.integer({ min: 0, max: 31 }), fc.boolean()], {
    numRuns: 120,
  })("core-resident pages and deltas (read in place), alone or mixed with JS arrays", (spec, shiftOld, shiftNew, mixed) => {
    const [oldPage, newPage] = makePair(spec);
    const expected = xbzrleEncodeReference(oldPage, newPage);
    const oldBlock = allocate(spec.size + 64);
    const newBlock = allocate(spec.size + 64);
    try {
      const oldView = oldBlock.bytes.subarray(shiftOld, shiftOld + spec.size);
      oldView.set(oldPage);
      const newView = newBlock.bytes.subarray(shiftNew, shiftNew + spec.size);
      newView.set(newPage);
      const delta = xbzrleEncode(mixed ? oldPage : oldView, newView);
      expect(hex(delta)).toBe(hex(expected));
      // Inputs are read, never written.
      expect(same(oldBlock.bytes.subarray(shiftOld, shiftOld + spec.size), oldPage)).toBe(true);
      expect(same(newBlock.bytes.subarray(shiftNew, shiftNew + spec.size), newPage)).toBe(true);
      if (delta !== null) {
        // A core-resident delta, decoded onto the core-resident old page.
        const deltaBlock = allocate(delta.length + 16);
        try {
          const deltaView = deltaBlock.bytes.subarray(shiftNew & 15, (shiftNew & 15) + delta.length);
          deltaView.set(delta);
          const target = oldBlock.bytes.subarray(shiftOld, shiftOld + spec.size);
          xbzrleDecode(deltaView, target);
          expect(same(oldBlock.bytes.subarray(shiftOld, shiftOld + spec.size), newPage)).toBe(true);
        } finally {
          deltaBlock.free();
        }
      }
    } finally {
      oldBlock.free();
      newBlock.free();
    }
  });

  test("core-resident inputs stay valid when staging the others grows memory", () => {
    // A staged page larger than all of memory forces scratch() to grow it, which detaches views
    // taken before; the wrappers must have read the resident pointers first.
    const size = Math.max(core().memory.buffer.byteLength, 1 << 20) + 4096;
    const [oldPage, newPage] = makePair({ size, seed: 99, mode: "sparse", runs: 200, maxRun: 16, percent: 0 });
    // Keep every run representable: one changed byte every 8 KiB.
    for (let i = 0; i < size; i += 8192) newPage[i] = oldPage[i]! ^ 0xff;
    const expected = xbzrleEncodeReference(oldPage, newPage);
    expect(expected).not.toBeNull();

    const oldBlock = allocate(size);
    oldBlock.bytes.set(oldPage);
    try {
      expect(hex(xbzrleEncode(oldBlock.bytes, newPage))).toBe(hex(expected));
      const target = oldBlock.bytes;
      const bigDelta = new Uint8Array(core().memory.buffer.byteLength + 1); // staging grows memory again
      bigDelta.set(expected!);
      // The padded delta is malformed after the real one ends, so it is rejected untouched...
      expectEinval(() => xbzrleDecode(bigDelta, target));
      expect(same(oldBlock.bytes, oldPage)).toBe(true);
      // ...and the real one applies in place.
      xbzrleDecode(expected!, oldBlock.bytes);
      expect(same(oldBlock.bytes, newPage)).toBe(true);
    } finally {
      oldBlock.free();
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Malformed deltas

describe("xbzrle decoder rejects malformed deltas, leaving the page unchanged", () => {
  /** Each case: delta, page length, Wasm status, offset of the faulty length field. */
  const cases: Array<[string, number[], number, number, number]> = [
    ["truncated varint (1 byte left at a zrun)", [0x81], 16, -1, 0],
    ["truncated varint (1 byte left at an nzrun)", [0x00, 0x81], 16, -1, 1],
    ["trailing byte after a valid pair", [0x00, 0x01, 0xaa, 0x03], 16, -1, 3],
    ["3-byte varint in a zrun", [0x80, 0x80, 0x01, 0x01, 0xaa], 1 << 20, -2, 0],
    ["3-byte varint in an nzrun", [0x00, 0x81, 0x80, 0x01, 0xaa], 1 << 20, -2, 1],
    ["zero nzrun", [0x05, 0x00, 0xaa], 16, -3, 1],
    ["zero zrun after the first pair", [0x00, 0x01, 0xaa, 0x00, 0x01, 0xbb], 16, -3, 3],
    ["zrun beyond the page end", [0x11, 0x01, 0xaa], 16, -4, 0],
    ["nzrun beyond the page end", [0x0f, 0x02, 0xaa, 0xbb], 16, -4, 1],
    ["nzrun starting at the page end", [0x10, 0x01, 0xaa], 16, -4, 1],
    ["nzrun data beyond the input", [0x00, 0x05, 0xaa, 0xbb], 16, -1, 1],
    ["second pair beyond the page end", [0x00, 0x01, 0xaa, 0x0e, 0x02, 0xbb, 0xcc], 16, -4, 4],
  ];

  for (const [name, bytes, pageLen, status, offset] of cases) {
    test(name, () => {
      const delta = Uint8Array.from(bytes);
      const page = noise(pageLen, pageLen + bytes.length);

      // Raw kernel status.
      const deltaBlock = allocate(delta.length);
      const pageBlock = allocate(pageLen);
      try {
        deltaBlock.bytes.set(delta);
        pageBlock.bytes.set(page);
        expect(core().exports.xbzrle_decode(deltaBlock.ptr, delta.length, pageBlock.ptr, pageLen)).toBe(status);
        expect(same(pageBlock.bytes, page)).toBe(true);
      } finally {
        deltaBlock.free();
        pageBlock.free();
      }

      // Wrapper and reference: EINVAL naming the problem at the same offset.
      const wasm = page.slice();
      const error = expectEinval(() => xbzrleDecode(delta, wasm));
      expect(error.byteOffset).toBe(offset);
      expect(error.message).toContain(`at byte ${offset}`);
      const problem = PROBLEMS[-status - 1]!;
      expect(error.message).toContain(problem);
      expect(same(wasm, page)).toBe(true);
      expect(decodeAll(delta, page)).toEqual({ ok: false, offset, problem });
    });
  }

  test("accepted edge cases: empty delta, zero first zrun, run ending at the page end, non-minimal length", () => {
    const page = noise(16, 5);
    expect(decodeAll(new Uint8Array(0), page)).toEqual({ ok: true, page });
    const expectPage = (delta: number[], changes: Array<[number, number]>): void => {
      const want = page.slice();
      for (const [at, value] of changes) want[at] = value;
      const result = decodeAll(Uint8Array.from(delta), page);
      expect(result.ok && same(result.page, want)).toBe(true);
    };
    expectPage(
      [0x00, 0x02, 0xaa, 0xbb],
      [
        [0, 0xaa],
        [1, 0xbb],
      ],
    );
    expectPage([0x0f, 0x01, 0xcc], [[15, 0xcc]]);
    // QEMU's decoder accepts a 2-byte form of a small value (0x81 0x00 = 1), so do we.
    expectPage(
      [0x81, 0x00, 0x01, 0xdd, 0x01, 0x01, 0xee],
      [
        [1, 0xdd],
        [3, 0xee],
      ],
    );
    const status = (() => {
      const d = allocate(4);
      const p = allocate(16);
      try {
        d.bytes.set([0x0f, 0x01, 0xcc]);
        return core().exports.xbzrle_decode(d.ptr, 3, p.ptr, 16);
      } finally {
        d.free();
        p.free();
      }
    })();
    expect(status).toBe(16); // the decoded end position
  });

  test("every truncation of a valid 4 KiB delta is rejected or decodes a prefix", () => {
    const [oldPage, newPage] = makePair({ size: 4096, seed: 7, mode: "sparse", runs: 12, maxRun: 200, percent: 0 });
    const delta = xbzrleEncode(oldPage, newPage)!;
    expect(delta.length).toBeGreaterThan(100);
    let accepted = 0;
    for (let cut = 0; cut < delta.length; cut++) if (decodeAll(delta.subarray(0, cut), oldPage).ok) accepted++;
    expect(accepted).toBeGreaterThan(0); // cuts at pair boundaries are valid shorter deltas
    expect(accepted).toBeLessThan(delta.length);
  });

  test.prop([pairSpec(600)], { numRuns: 60 })("every truncation of random deltas: Wasm and reference agree", (spec) => {
    const [oldPage, newPage] = makePair(spec);
    const delta = xbzrleEncodeReference(oldPage, newPage, 3 * spec.size)!;
    for (let cut = 0; cut < delta.length; cut++) decodeAll(delta.subarray(0, cut), oldPage, cut & 15);
  });

  type Mutation =
    | { kind: "flip"; at: number; bit: number }
    | { kind: "set"; at: number; value: number }
    | { kind: "insert"; at: number; value: number }
    | { kind: "remove"; at: number };
  const mutation: fc.Arbitrary<Mutation> = fc.oneof(
    fc.record({ kind: fc.constant("flip" as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
    fc.record({ kind: fc.constant("set" as const), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }),
    fc.record({ kind: fc.constant("insert" as const), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }),
    fc.record({ kind: fc.constant("remove" as const), at: fc.nat() }),
  );
  const mutate = (delta: Uint8Array, mutations: Mutation[]): Uint8Array => {
    const bytes = Array.from(delta);
    for (const m of mutations) {
      const at = m.at % (bytes.length + (m.kind === "insert" ? 1 : 0) || 1);
      if (m.kind === "insert") bytes.splice(at, 0, m.value);
      else if (bytes.length === 0) continue;
      else if (m.kind === "flip") bytes[at] = bytes[at]! ^ (1 << m.bit);
      else if (m.kind === "set") bytes[at] = m.value;
      else bytes.splice(at, 1);
    }
    return Uint8Array.from(bytes);
  };

  test.prop([pairSpec(2000), fc.array(mutation, { minLength: 1, maxLength: 4 }), fc.integer({ min: 0, max: 15 })], {
    numRuns: 400,
  })("random mutations: both reject (same problem and offset) or both apply identically", (spec, mutations, shift) => {
    const [oldPage, newPage] = makePair(spec);
    const delta = xbzrleEncodeReference(oldPage, newPage, 3 * spec.size)!;
    const result = decodeAll(mutate(delta, mutations), oldPage, shift);
    if (result.ok) expect(result.page.length).toBe(spec.size);
  });

  test.prop([fc.uint8Array({ maxLength: 64, size: "max" }), fc.integer({ min: 0, max: 300 })], { numRuns: 400 })(
    "arbitrary bytes as a delta: Wasm and reference agree",
    (bytes, pageLen) => {
      decodeAll(bytes, noise(pageLen, pageLen + 1));
    },
  );
});
