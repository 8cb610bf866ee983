import { fc, test } from "@fast-check/vitest";
import { createXXHash3, xxhash3 } from "hash-wasm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { allocate, type CoreBuffer } from "../../src/core/buffer.js";
import { MigrationError } from "../../src/core/errors.js";
import { core, guarded } from "../../src/core/instance.js";
import { Xxh3Reference, xxh3Reference } from "../../src/core/reference/xxh3.js";
import { createXxh3, xxh3 } from "../../src/core/xxh3.js";

/** hash-wasm is the third, independent implementation; it takes the seed as two u32 halves. */
async function hashWasm(data: Uint8Array, seed: bigint): Promise<bigint> {
  const hex = await xxhash3(data, Number(seed & 0xffffffffn), Number(seed >> 32n));
  return BigInt(`0x${hex}`);
}

function pattern(length: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = (i * 131 + 7) & 0xff;
  return out;
}

function randomBytes(length: number, seed: number): Uint8Array {
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

const SEED = 0x9e3779b97f4a7c15n;

// [length, XXH3-64 of pattern(length) with seed 0, with SEED], computed with hash-wasm 4.13.
const KNOWN: ReadonlyArray<readonly [number, bigint, bigint]> = [
  [0, 0x2d06800538d394c2n, 0x602b0e2cd6662c8bn],
  [1, 0x4c5cca45d0f4811fn, 0x2f3acd3805f81de3n],
  [3, 0x6e3e2670e61106acn, 0xbc74611d87f659e0n],
  [4, 0x5c4c63133443d03fn, 0x6c3753177c607de4n],
  [8, 0xf9fd4dd0b04d78f5n, 0xbc72d0531396303fn],
  [9, 0x7c20df9712c26edfn, 0x93c5aa006102daf5n],
  [16, 0x86abf6baccea0858n, 0x69d001b16ecf450an],
  [17, 0xb58bf5dc5022d071n, 0xb7c99d19be27eb69n],
  [128, 0x10d17f72c0ccba41n, 0x49b81c6e0abb9305n],
  [129, 0x1648bdc3db49d1a2n, 0x5e3831b221810b00n],
  [240, 0xb6cfaf343fab81e6n, 0x76a73ec26433f82cn],
  [241, 0x956cae592c67279en, 0x2be236ba3bacf75cn],
  [1024, 0x70bd377d9574f4bbn, 0xd8cf6b464541f232n],
  [1025, 0x66c4487c41e127a7n, 0x8dc3a55e9c26d886n],
  [4096, 0x9ddd66c14af0daffn, 0xc7bc989f5d547a4dn],
  [100000, 0x14ce8d6fc2c4868bn, 0x263f44da5aa71862n],
];

/** Lengths on and around every internal boundary of XXH3 and of the streaming buffer. */
const BOUNDARY_LENGTHS: number[] = (() => {
  const set = new Set<number>();
  for (let n = 0; n <= 20; n++) set.add(n);
  for (const n of [32, 33, 48, 49, 64, 65, 96, 97, 127, 128, 129, 239, 240, 241, 255, 256, 257, 320]) set.add(n);
  for (let k = 1; k <= 40; k++) for (const d of [-1, 0, 1]) set.add(64 * k + d);
  for (let k = 1; k <= 6; k++) for (const d of [-65, -64, -63, -1, 0, 1, 63, 64, 65]) set.add(1024 * k + d);
  return [...set].filter((n) => n >= 0).sort((a, b) => a - b);
})();

const u64 = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n });
/** Mostly short and mid lengths, sometimes past several 1 KiB blocks. */
const length = fc.oneof(
  { weight: 3, arbitrary: fc.integer({ min: 0, max: 300 }) },
  { weight: 3, arbitrary: fc.integer({ min: 0, max: 5000 }) },
  { weight: 1, arbitrary: fc.constantFrom(...BOUNDARY_LENGTHS) },
  { weight: 1, arbitrary: fc.integer({ min: 5000, max: 70_000 }) },
);

describe("xxh3 known answers", () => {
  it("hashes the empty input to the published XXH3-64 value", () => {
    expect(xxh3(new Uint8Array(0))).toBe(0x2d06800538d394c2n);
    expect(xxh3Reference(new Uint8Array(0))).toBe(0x2d06800538d394c2n);
  });

  it.each(KNOWN)("pattern(%i) matches the pinned vectors", (len, unseeded, seeded) => {
    const data = pattern(len);
    expect(xxh3(data)).toBe(unseeded);
    expect(xxh3(data, 0n)).toBe(unseeded);
    expect(xxh3(data, SEED)).toBe(seeded);
    expect(xxh3Reference(data)).toBe(unseeded);
    expect(xxh3Reference(data, SEED)).toBe(seeded);
    expect(createXxh3(SEED).update(data).digest()).toBe(seeded);
  });

  it("pinned vectors agree with hash-wasm", async () => {
    for (const [len, unseeded, seeded] of KNOWN) {
      expect(await hashWasm(pattern(len), 0n)).toBe(unseeded);
      expect(await hashWasm(pattern(len), SEED)).toBe(seeded);
    }
  });
});

describe("xxh3 differential (Wasm vs TS reference vs hash-wasm)", () => {
  it("agrees on every boundary length, for seed 0, a small seed, a 64-bit seed and 2^64-1", async () => {
    const data = randomBytes(8 * 1024, 7);
    for (const seed of [0n, 1n, SEED, (1n << 64n) - 1n]) {
      for (const len of BOUNDARY_LENGTHS) {
        const input = data.subarray(3, 3 + len);
        const expected = await hashWasm(input, seed);
        expect(xxh3(input, seed), `len ${len} seed ${seed}`).toBe(expected);
        expect(xxh3Reference(input, seed), `reference len ${len} seed ${seed}`).toBe(expected);
      }
    }
  });

  test.prop([length, u64, fc.integer({ min: 0, max: 63 }), fc.integer({ min: 1, max: 2 ** 31 })], { numRuns: 300 })(
    "random lengths, seeds and unaligned offsets",
    async (len, seed, offset, salt) => {
      const input = randomBytes(len + offset, salt).subarray(offset);
      const expected = await hashWasm(input, seed);
      expect(xxh3(input, seed)).toBe(expected);
      expect(xxh3Reference(input, seed)).toBe(expected);
    },
  );

  it("agrees on a few large inputs", async () => {
    for (const [len, seed] of [
      [1 << 20, 0n],
      [(1 << 20) + 1, SEED],
      [3 * 1024 * 1024 + 17, 0n],
      [3 * 1024 * 1024 - 1, (1n << 64n) - 1n],
    ] as const) {
      const input = randomBytes(len, len);
      expect(xxh3(input, seed)).toBe(await hashWasm(input, seed));
    }
  });

  it("agrees with hash-wasm's streaming API on the binary digest", async () => {
    const hasher = await createXXHash3(0x7f4a7c15, 0x9e3779b9);
    const input = randomBytes(5000, 3);
    hasher.init();
    hasher.update(input.subarray(0, 1234));
    hasher.update(input.subarray(1234));
    const bytes = hasher.digest("binary");
    let fromBinary = 0n;
    for (const b of bytes) fromBinary = (fromBinary << 8n) | BigInt(b);
    expect(xxh3(input, SEED)).toBe(fromBinary);
  });
});

/** Cuts `data` at the given fractions (sorted, deduplicated) into consecutive pieces. */
function segments(data: Uint8Array, cuts: number[]): Uint8Array[] {
  const points = [...new Set(cuts.map((f) => Math.floor(f * data.length)))].sort((a, b) => a - b);
  const out: Uint8Array[] = [];
  let start = 0;
  for (const p of points) {
    out.push(data.subarray(start, p));
    start = p;
  }
  out.push(data.subarray(start));
  return out;
}

describe("xxh3 streaming", () => {
  test.prop([length, u64, fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 12 }), fc.integer({ min: 1, max: 2 ** 31 })], { numRuns: 300 })(
    "any segmentation gives the one-shot digest (Wasm and reference)",
    (len, seed, cuts, salt) => {
      const input = randomBytes(len, salt);
      const expected = xxh3(input, seed);
      const hasher = createXxh3(seed);
      const reference = new Xxh3Reference(seed);
      try {
        for (const piece of segments(input, cuts)) {
          hasher.update(piece);
          reference.update(piece);
        }
        expect(hasher.digest()).toBe(expected);
        expect(reference.digest()).toBe(expected);
      } finally {
        hasher.free();
      }
    },
  );

  it("byte-at-a-time and odd-sized pieces across block boundaries", () => {
    const input = randomBytes(2600, 11);
    for (const step of [1, 7, 63, 64, 65, 255, 256, 257, 1023, 1024, 1025]) {
      const hasher = createXxh3(SEED);
      const reference = new Xxh3Reference(SEED);
      for (let i = 0; i < input.length; i += step) {
        hasher.update(input.subarray(i, i + step));
        reference.update(input.subarray(i, i + step));
      }
      expect(hasher.digest(), `step ${step}`).toBe(xxh3(input, SEED));
      expect(reference.digest(), `reference step ${step}`).toBe(xxh3(input, SEED));
      hasher.free();
    }
  });

  test.prop([fc.array(fc.integer({ min: 0, max: 3000 }), { minLength: 1, maxLength: 8 }), u64], { numRuns: 60 })(
    "digest does not consume the state: digest after each update matches the prefix hash",
    (sizes, seed) => {
      const total = sizes.reduce((a, b) => a + b, 0);
      const input = randomBytes(total, total + 1);
      const hasher = createXxh3(seed);
      const reference = new Xxh3Reference(seed);
      let offset = 0;
      try {
        for (const size of sizes) {
          hasher.update(input.subarray(offset, offset + size));
          reference.update(input.subarray(offset, offset + size));
          offset += size;
          const prefix = xxh3(input.subarray(0, offset), seed);
          expect(hasher.digest()).toBe(prefix);
          expect(hasher.digest()).toBe(prefix);
          expect(reference.digest()).toBe(prefix);
        }
      } finally {
        hasher.free();
      }
    },
  );

  it("handles an input larger than the 1 MiB copy window (one-shot and streaming)", async () => {
    const input = randomBytes(3 * 1024 * 1024 + 5, 99);
    const expected = await hashWasm(input, SEED);
    expect(xxh3(input, SEED)).toBe(expected);
    const hasher = createXxh3(SEED);
    hasher.update(input.subarray(0, 100)).update(input.subarray(100, 2_500_000)).update(input.subarray(2_500_000));
    expect(hasher.digest()).toBe(expected);
    hasher.free();
    const reference = new Xxh3Reference(SEED);
    reference.update(input.subarray(0, 1_000_001)).update(input.subarray(1_000_001));
    expect(reference.digest()).toBe(expected);
  });
});

describe("xxh3 on core-resident data", () => {
  let buffer: CoreBuffer;
  const LEN = 3 * 1024 * 1024 + 77;

  beforeAll(() => {
    buffer = allocate(LEN);
    buffer.bytes.set(randomBytes(LEN, 5));
  });
  afterAll(() => buffer.free());

  test.prop([fc.integer({ min: 0, max: 64 }), fc.integer({ min: 0, max: 9000 }), u64], { numRuns: 150 })(
    "hashes views of core memory in place, same result as a plain copy",
    (offset, len, seed) => {
      const view = buffer.bytes.subarray(offset, offset + len);
      expect(core().owns(view)).toBe(true);
      const copy = view.slice();
      expect(core().owns(copy)).toBe(false);
      expect(xxh3(view, seed)).toBe(xxh3(copy, seed));
      const hasher = createXxh3(seed);
      hasher.update(view.subarray(0, len >> 1)).update(copy.subarray(len >> 1));
      expect(hasher.digest()).toBe(xxh3(copy, seed));
      hasher.free();
    },
  );

  it("hashes a multi-MiB core buffer in place and in pieces", async () => {
    const bytes = buffer.bytes;
    const expected = await hashWasm(bytes, 0n);
    expect(xxh3(bytes)).toBe(expected);
    const hasher = createXxh3();
    hasher.update(bytes.subarray(0, 1_000_003)).update(bytes.subarray(1_000_003));
    expect(hasher.digest()).toBe(expected);
    hasher.free();
  });

  it("does not leak core memory", () => {
    const before = core().allocatedBytes;
    const hasher = createXxh3(5n);
    hasher.update(pattern(5000));
    hasher.digest();
    hasher.free();
    hasher.free();
    xxh3(randomBytes(2 * 1024 * 1024, 3));
    expect(core().allocatedBytes).toBeLessThanOrEqual(before + 2 * 1024 * 1024 + 4096);
  });
});

describe("xxh3 argument validation", () => {
  function expectCode(fn: () => unknown, code: string): void {
    try {
      fn();
    } catch (error) {
      expect(error).toBeInstanceOf(MigrationError);
      expect((error as MigrationError).code).toBe(code);
      return;
    }
    expect.fail("expected a MigrationError");
  }

  it("rejects non-Uint8Array data with EINVAL", () => {
    for (const bad of [null, undefined, "abc", [1, 2, 3], new Uint16Array(4), new ArrayBuffer(8), new DataView(new ArrayBuffer(8))]) {
      expectCode(() => xxh3(bad as unknown as Uint8Array), "EINVAL");
      const hasher = createXxh3();
      expectCode(() => hasher.update(bad as unknown as Uint8Array), "EINVAL");
      hasher.free();
    }
  });

  it("rejects seeds outside [0, 2^64) and non-bigint seeds with EINVAL", () => {
    for (const bad of [-1n, 1n << 64n, (1n << 64n) + 5n, 0, 1, "0", null]) {
      expectCode(() => xxh3(new Uint8Array(4), bad as unknown as bigint), "EINVAL");
      expectCode(() => createXxh3(bad as unknown as bigint), "EINVAL");
    }
    expect(xxh3(new Uint8Array(4), (1n << 64n) - 1n)).toBeTypeOf("bigint");
  });

  it("rejects a view of core memory detached by growth with EINVAL instead of hashing it as empty", () => {
    const small = allocate(64);
    const stale = small.bytes;
    const big = allocate(core().memory.buffer.byteLength); // forces memory.grow, detaching `stale`
    try {
      expect(stale.byteLength).toBe(0);
      expectCode(() => xxh3(stale), "EINVAL");
      const hasher = createXxh3();
      expectCode(() => hasher.update(stale), "EINVAL");
      hasher.free();
      expect(xxh3(new Uint8Array(0))).toBe(0x2d06800538d394c2n);
    } finally {
      big.free();
      small.free();
    }
  });

  it("rejects use after free with EINVAL", () => {
    const hasher = createXxh3();
    hasher.free();
    expectCode(() => hasher.update(new Uint8Array(1)), "EINVAL");
    expectCode(() => hasher.digest(), "EINVAL");
  });

  it("returns hashes as unsigned 64-bit bigints", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 600 }), u64, (data, seed) => {
        const h = xxh3(data, seed);
        return h >= 0n && h < 1n << 64n;
      }),
      { numRuns: 100 },
    );
  });
});

// Last in the file: it throws the current core instance away.
describe("xxh3 after the core instance was replaced", () => {
  it("a hasher from the old instance throws EFAULT; new hashers work", () => {
    const hasher = createXxh3(SEED);
    hasher.update(pattern(100));
    // A trap inside guarded() is how the core gets replaced; simulate one.
    expect(() =>
      guarded(() => {
        throw new WebAssembly.RuntimeError("simulated trap");
      }),
    ).toThrow(MigrationError);
    for (const fn of [() => hasher.update(pattern(1)), () => hasher.digest()]) {
      try {
        fn();
        expect.fail("expected EFAULT");
      } catch (error) {
        expect(error).toBeInstanceOf(MigrationError);
        expect((error as MigrationError).code).toBe("EFAULT");
      }
    }
    hasher.free();
    expect(createXxh3(SEED).update(pattern(100)).digest()).toBe(xxh3(pattern(100), SEED));
  });
});
