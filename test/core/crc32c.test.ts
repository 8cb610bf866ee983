import { crc32c as nativeCrc32c } from "@node-rs/crc32";
import { fc, test } from "@fast-check/vitest";
import { describe, expect } from "vitest";
import { allocate } from "../../src/core/buffer.js";
import { crc32c } from "../../src/core/crc32c.js";
import { MigrationError } from "../../src/core/errors.js";
import { crc32cReference } from "../../src/core/reference/crc32c.js";

/** The three implementations must agree; returns the common value. */
function agreed(data: Uint8Array, crc = 0): number {
  const wasm = crc32c(data, crc);
  const reference = crc32cReference(data, crc);
  const native = nativeCrc32c(data, crc) >>> 0;
  expect(wasm).toBe(native);
  expect(reference).toBe(native);
  return wasm;
}

/** Deterministic pseudo-random bytes (xorshift32), so big inputs stay cheap to build. */
function noise(length: number, seed = 0x9e3779b9): Uint8Array {
  const out = new Uint8Array(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

const ascii = (s: string): Uint8Array => new TextEncoder().encode(s);
const u32 = fc.integer({ min: 0, max: 0xffffffff });

/**
 * Byte arrays of length 0..max. fast-check's default size caps arrays at ~10 elements whatever
 * maxLength says, so ask for the whole range explicitly, half the time among short lengths.
 */
const bytes = (max: number): fc.Arbitrary<Uint8Array> =>
  fc.oneof(fc.uint8Array({ maxLength: Math.min(max, 40), size: "max" }), fc.uint8Array({ maxLength: max, size: "max" }));

describe("crc32c known answers", () => {
  test("check value of '123456789' is 0xE3069283", () => {
    expect(crc32c(ascii("123456789"))).toBe(0xe3069283);
    expect(agreed(ascii("123456789"))).toBe(0xe3069283);
  });

  test("empty input gives 0, and continuing with nothing keeps the running value", () => {
    expect(crc32c(new Uint8Array(0))).toBe(0);
    expect(agreed(new Uint8Array(0))).toBe(0);
    expect(crc32c(new Uint8Array(0), 0xdeadbeef)).toBe(0xdeadbeef);
    expect(crc32cReference(new Uint8Array(0), 0xdeadbeef)).toBe(0xdeadbeef);
  });

  // RFC 3720 (iSCSI) B.4 vectors plus a couple of common strings, pinned and checked natively.
  const vectors: Array<[string, Uint8Array, number]> = [
    ["32 zero bytes", new Uint8Array(32), 0x8a9136aa],
    ["32 0xff bytes", new Uint8Array(32).fill(0xff), 0x62a8ab43],
    ["32 ascending bytes", Uint8Array.from({ length: 32 }, (_, i) => i), 0x46dd794e],
    ["32 descending bytes", Uint8Array.from({ length: 32 }, (_, i) => 31 - i), 0x113fdb5c],
    ["quick brown fox", ascii("The quick brown fox jumps over the lazy dog"), 0x22620404],
    ["'a'", ascii("a"), 0xc1d04330],
  ];
  for (const [name, data, expected] of vectors) {
    test(`${name} -> 0x${expected.toString(16)}`, () => {
      expect(agreed(data)).toBe(expected);
    });
  }

  test("results are unsigned and Buffers work", () => {
    const value = crc32c(Buffer.from("123456789"));
    expect(value).toBeGreaterThan(0x7fffffff);
    expect(value).toBe(0xe3069283);
  });
});

describe("crc32c differential (Wasm vs TS reference vs @node-rs/crc32)", () => {
  test.prop([bytes(5000), u32], { numRuns: 200 })("random lengths 0..5000 with random initial crc", (data, crc) => {
    agreed(data, crc);
  });

  test.prop([fc.integer({ min: 5001, max: 300_000 }), fc.integer({ min: 1, max: 0xffffffff }), u32], { numRuns: 12 })("larger inputs", (length, seed, crc) => {
    agreed(noise(length, seed), crc);
  });

  test.prop([bytes(600), fc.integer({ min: 0, max: 31 }), u32], { numRuns: 150 })("unaligned subarrays", (data, shift, crc) => {
    // Place the data at every alignment inside a bigger buffer: the kernel loads words unaligned.
    const backing = new Uint8Array(data.length + 64).fill(0xa5);
    backing.set(data, shift);
    const view = backing.subarray(shift, shift + data.length);
    expect(crc32c(view, crc)).toBe(nativeCrc32c(data, crc) >>> 0);
    expect(crc32cReference(view, crc)).toBe(nativeCrc32c(data, crc) >>> 0);
  });

  test("lengths around the slicing block (0..48) and around 8 KiB", () => {
    const data = noise(8192 + 64, 7);
    for (let n = 0; n <= 48; n++) {
      for (const shift of [0, 1, 3, 7]) agreed(data.subarray(shift, shift + n), (n * 2654435761) >>> 0);
    }
    for (const n of [8191, 8192, 8193, 8192 - 16, 8192 + 15, 8192 + 17]) agreed(data.subarray(0, n), 0x12345678);
  });

  test.prop([bytes(4000), fc.array(fc.nat(), { maxLength: 6, size: "max" }), u32], { numRuns: 150 })(
    "chaining over random split points equals one pass",
    (data, cuts, crc) => {
      const points = [...new Set(cuts.map((c) => c % (data.length + 1)))].sort((a, b) => a - b);
      let running = crc;
      let start = 0;
      for (const point of [...points, data.length]) {
        running = crc32c(data.subarray(start, point), running);
        start = point;
      }
      expect(running).toBe(crc32c(data, crc));
      expect(running).toBe(nativeCrc32c(data, crc) >>> 0);
    },
  );
});

describe("crc32c input placement", () => {
  test.prop([bytes(20_000), fc.integer({ min: 0, max: 15 }), u32], {
    numRuns: 40,
  })("core-resident input (read in place) gives the same result", (data, shift, crc) => {
    const block = allocate(data.length + 16);
    try {
      const view = block.bytes.subarray(shift, shift + data.length);
      view.set(data);
      expect(crc32c(view, crc)).toBe(nativeCrc32c(data, crc) >>> 0);
    } finally {
      block.free();
    }
  });

  test("input larger than the 1 MiB staging window, resident or not", () => {
    const window = 1 << 20;
    for (const length of [window - 1, window, window + 1, 3 * window + 12345]) {
      const data = noise(length, length);
      const expected = nativeCrc32c(data, 0xcafef00d) >>> 0;
      expect(crc32c(data, 0xcafef00d)).toBe(expected);
      const block = allocate(length);
      try {
        block.bytes.set(data);
        expect(crc32c(block.bytes, 0xcafef00d)).toBe(expected);
      } finally {
        block.free();
      }
    }
  });
});

describe("crc32c argument validation", () => {
  const data = ascii("abc");
  test.each([-1, 2 ** 32, 1.5, Number.NaN, Number.POSITIVE_INFINITY])("initial crc %s is EINVAL", (crc) => {
    expect(() => crc32c(data, crc)).toThrow(MigrationError);
    try {
      crc32c(data, crc);
    } catch (error) {
      expect((error as MigrationError).code).toBe("EINVAL");
    }
  });

  test("non-Uint8Array data is EINVAL", () => {
    for (const bad of ["abc", [1, 2, 3], new Uint16Array(4), null, undefined]) {
      expect(() => crc32c(bad as unknown as Uint8Array)).toThrow(expect.objectContaining({ code: "EINVAL" }));
    }
  });

  test("crc at the edges of the range is accepted", () => {
    expect(crc32c(data, 0)).toBe(nativeCrc32c(data, 0) >>> 0);
    expect(crc32c(data, 0xffffffff)).toBe(nativeCrc32c(data, 0xffffffff) >>> 0);
  });
});
