import { fc, test } from "@fast-check/vitest";
import { describe, expect } from "vitest";
import { allocate, type CoreBuffer } from "../../src/core/buffer.js";
import { MigrationError } from "../../src/core/errors.js";
import { core } from "../../src/core/instance.js";
import { scanDirtyReference, scanHashReference, scanZeroReference } from "../../src/core/reference/scan.js";
import { bitmapBytes, isPageSet, pageCount, scanDirty, scanHash, scanZero, validatePageSize, type ScanResult } from "../../src/core/scan.js";

// ---------------------------------------------------------------------------------------------
// Helpers

/** Deterministic PRNG (xorshift32) so a scenario is fully determined by its seed. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

function noise(length: number, seed: number): Uint8Array {
  const next = rng(seed);
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = (next() * 256) | 0;
  return out;
}

type Where = "first" | "last" | "random" | "mixed";

/** Region geometry plus where to put changes: arbitrary page size, partial last page, density. */
interface Scenario {
  pageSize: number;
  length: number;
  seed: number;
  /** Probability that a page is selected (dirty / non-zero / changed). */
  density: number;
  where: Where;
}

/** Keeps the reference (a JS byte loop) cheap: at most this many bytes per region. */
const MAX_REGION = 384 * 1024;

const scenarioArb: fc.Arbitrary<Scenario> = fc
  .record({
    log2: fc.integer({ min: 6, max: 16 }),
    pages: fc.integer({ min: 0, max: 70 }),
    tailKind: fc.constantFrom("none", "tiny", "any"),
    tail: fc.nat(),
    seed: fc.integer({ min: 1, max: 0xffffffff }),
    density: fc.constantFrom(0, 0.03, 0.2, 0.5, 0.9, 1),
    where: fc.constantFrom<Where>("first", "last", "random", "mixed"),
  })
  .map(({ log2, pages, tailKind, tail, seed, density, where }) => {
    const pageSize = 2 ** log2;
    const full = Math.min(pages, Math.floor(MAX_REGION / pageSize));
    // "tiny" tails (1..15 B) take the kernels' scalar path; "any" may be anything short of a page.
    const extra = tailKind === "none" ? 0 : tailKind === "tiny" ? 1 + (tail % 15) : 1 + (tail % (pageSize - 1));
    return { pageSize, length: full * pageSize + extra, seed, density, where };
  });

/** Byte offsets of the pages selected by the scenario, one per selected page. */
function selectedOffsets(s: Scenario): number[] {
  const next = rng(s.seed ^ 0x5bd1e995);
  const offsets: number[] = [];
  const pages = Math.ceil(s.length / s.pageSize);
  for (let p = 0; p < pages; p++) {
    if (next() >= s.density) continue;
    const start = p * s.pageSize;
    const size = Math.min(s.pageSize, s.length - start);
    const where = s.where === "mixed" ? (["first", "last", "random"] as const)[Math.floor(next() * 3)]! : s.where;
    // Changes at the first and last byte of a page catch off-by-one page boundaries.
    const at = where === "first" ? 0 : where === "last" ? size - 1 : Math.floor(next() * size);
    offsets.push(start + at);
  }
  return offsets;
}

/** A current/shadow pair: shadow is random, current differs on the selected pages. */
function dirtyPair(s: Scenario): { current: Uint8Array; shadow: Uint8Array } {
  const shadow = noise(s.length, s.seed);
  const current = shadow.slice();
  const next = rng(s.seed + 1);
  for (const at of selectedOffsets(s)) current[at] = current[at]! ^ (1 + ((next() * 255) | 0));
  return { current, shadow };
}

/** A region of zero pages with one non-zero byte on each selected page. */
function zeroRegion(s: Scenario): Uint8Array {
  const data = new Uint8Array(s.length);
  const next = rng(s.seed + 2);
  for (const at of selectedOffsets(s)) data[at] = 1 + ((next() * 255) | 0);
  return data;
}

type Place = "js" | "core";
const placeArb = fc.constantFrom<Place>("js", "core");

/**
 * An argument placed for a scan. `bytes` is taken afresh on each access: allocating (another
 * block, or the scan's own scratch) may grow core memory, which detaches older views.
 */
interface Placed {
  readonly bytes: Uint8Array;
}

/** Tracks core blocks made for one property run so they are always freed. */
class Blocks {
  readonly #blocks: CoreBuffer[] = [];

  /** `data` in the requested place: as is, or copied into core memory at an odd offset. */
  place(data: Uint8Array, place: Place, offset = 3): Placed {
    if (place === "js") return { bytes: data };
    const block = allocate(data.length + offset);
    this.#blocks.push(block);
    block.bytes.set(data, offset);
    return {
      get bytes() {
        return block.bytes.subarray(offset, offset + data.length);
      },
    };
  }

  free(): void {
    for (const block of this.#blocks) block.free();
  }
}

/** Runs `fn` with a Blocks tracker and frees the blocks afterwards. */
function withBlocks<T>(fn: (blocks: Blocks) => T): T {
  const blocks = new Blocks();
  try {
    return fn(blocks);
  } finally {
    blocks.free();
  }
}

/** Bitmap equality on the first bitmapBytes(pages) bytes, plus padding bits zero. */
function expectBitmap(actual: Uint8Array, expected: Uint8Array, pages: number): void {
  const n = bitmapBytes(pages);
  expect(expected.length).toBe(n);
  expect(Array.from(actual.subarray(0, n))).toEqual(Array.from(expected));
  if (pages % 8 !== 0) expect(actual[n - 1]! >>> (pages % 8)).toBe(0);
}

function popcount(bitmap: Uint8Array): number {
  let n = 0;
  for (const byte of bitmap) for (let b = byte; b !== 0; b &= b - 1) n++;
  return n;
}

function expectEinval(fn: () => unknown): void {
  let caught: unknown;
  try {
    fn();
  } catch (error) {
    caught = error;
  }
  expect(caught).toBeInstanceOf(MigrationError);
  expect((caught as MigrationError).code).toBe("EINVAL");
}

// ---------------------------------------------------------------------------------------------

describe("helpers", () => {
  test("pageCount rounds up, bitmapBytes is one bit per page", () => {
    expect(pageCount(0, 4096)).toBe(0);
    expect(pageCount(1, 4096)).toBe(1);
    expect(pageCount(4096, 4096)).toBe(1);
    expect(pageCount(4097, 4096)).toBe(2);
    expect(pageCount(2 ** 40 + 1, 1 << 20)).toBe(2 ** 20 + 1);
    expect(bitmapBytes(0)).toBe(0);
    expect(bitmapBytes(1)).toBe(1);
    expect(bitmapBytes(8)).toBe(1);
    expect(bitmapBytes(9)).toBe(2);
  });

  test("isPageSet reads LSB-first bits and treats pages past the end as clear", () => {
    const bitmap = Uint8Array.of(0b0000_0101, 0b1000_0000);
    expect([0, 1, 2, 3, 15, 14, 16, 1000].map((p) => isPageSet(bitmap, p))).toEqual([true, false, true, false, true, false, false, false]);
  });

  test("validatePageSize accepts powers of two in 64..1 MiB only", () => {
    for (let s = 64; s <= 1 << 20; s *= 2) expect(() => validatePageSize(s)).not.toThrow();
    for (const bad of [0, 1, 32, 63, 65, 100, 3000, 4095, 2 ** 21, -4096, 1.5, Number.NaN, Infinity]) {
      expectEinval(() => validatePageSize(bad));
    }
    expectEinval(() => pageCount(-1, 4096));
    expectEinval(() => pageCount(4096, 1000));
    expectEinval(() => bitmapBytes(-1));
    expectEinval(() => isPageSet(new Uint8Array(1), -1));
  });
});

describe("scanDirty", () => {
  test.prop([scenarioArb, placeArb, placeArb, fc.boolean()], { numRuns: 300 })(
    "matches the reference, with and without refresh, wherever the inputs live",
    (s, curPlace, shadowPlace, refresh) => {
      const { current, shadow } = dirtyPair(s);
      const pages = pageCount(s.length, s.pageSize);
      const refShadow = shadow.slice();
      const expected = scanDirtyReference(current, refShadow, s.pageSize, refresh);
      withBlocks((blocks) => {
        const cur = blocks.place(current, curPlace);
        const sh = blocks.place(shadow, shadowPlace, 5);
        const result = scanDirty(cur.bytes, sh.bytes, s.pageSize, { refresh });
        expect(result.count).toBe(expected.count);
        expect(popcount(result.bitmap)).toBe(result.count);
        expectBitmap(result.bitmap, expected.bitmap, pages);
        expect(Buffer.compare(sh.bytes, refShadow)).toBe(0);
      });
    },
  );

  test.prop([scenarioArb, placeArb, placeArb], { numRuns: 80 })(
    "refresh: shadow equals current on dirty pages and is unchanged elsewhere; a rescan is clean",
    (s, curPlace, shadowPlace) => {
      const { current, shadow } = dirtyPair(s);
      const before = shadow.slice();
      withBlocks((blocks) => {
        const cur = blocks.place(current, curPlace);
        const sh = blocks.place(shadow, shadowPlace);
        const first = scanDirty(cur.bytes, sh.bytes, s.pageSize, { refresh: true });
        const after = sh.bytes.slice();
        for (let p = 0; p < pageCount(s.length, s.pageSize); p++) {
          const start = p * s.pageSize;
          const end = Math.min(start + s.pageSize, s.length);
          const want = isPageSet(first.bitmap, p) ? current : before;
          expect(Buffer.compare(after.subarray(start, end), want.subarray(start, end))).toBe(0);
        }
        const second = scanDirty(cur.bytes, sh.bytes, s.pageSize);
        expect(second.count).toBe(0);
        expect(second.bitmap.every((b) => b === 0)).toBe(true);
      });
    },
  );

  test.prop([scenarioArb, placeArb, fc.integer({ min: 0, max: 5 })], { numRuns: 60 })(
    "fills a caller-provided bitmap: clears stale bits, zero padding, nothing written past its bytes",
    (s, mapPlace, slack) => {
      const { current, shadow } = dirtyPair(s);
      const pages = pageCount(s.length, s.pageSize);
      const expected = scanDirtyReference(current, shadow.slice(), s.pageSize, false);
      withBlocks((blocks) => {
        const garbage = new Uint8Array(bitmapBytes(pages) + slack).fill(0xff);
        const bitmap = blocks.place(garbage, mapPlace).bytes;
        const result = scanDirty(current, shadow, s.pageSize, { bitmap });
        expect(result.count).toBe(expected.count);
        if (mapPlace === "js") expect(result.bitmap).toBe(bitmap);
        expectBitmap(result.bitmap, expected.bitmap, pages);
        expect(Array.from(result.bitmap.subarray(bitmapBytes(pages)))).toEqual(new Array(slack).fill(0xff));
      });
    },
  );

  test("staged inputs larger than one window, with dirty pages at window edges", () => {
    // 4 KiB pages: 1 MiB windows = 256 pages. 256 KiB pages: 2 MiB windows = 8 pages.
    for (const pageSize of [4096, 256 * 1024]) {
      const length = 5 * (1 << 20) + 1234;
      const shadow = noise(length, pageSize);
      const current = shadow.slice();
      const window = Math.max(1 << 20, pageSize * 8);
      for (const at of [0, window - 1, window, 2 * window - 1, 2 * window + 7, length - 1]) current[at]! ^= 0x40;
      for (const place of ["js", "core"] as const) {
        withBlocks((blocks) => {
          const refShadow = shadow.slice();
          const expected = scanDirtyReference(current, refShadow, pageSize, true);
          const sh = shadow.slice();
          const cur = blocks.place(current, place);
          const result = scanDirty(cur.bytes, sh, pageSize, { refresh: true });
          expect(result.count).toBe(expected.count);
          expectBitmap(result.bitmap, expected.bitmap, pageCount(length, pageSize));
          expect(Buffer.compare(sh, refShadow)).toBe(0);
        });
      }
    }
  });

  test("copy-back into a JS shadow writes only the dirty pages", () => {
    const pageSize = 64;
    const length = 64 * 40 + 10;
    const shadow = noise(length, 99);
    const current = shadow.slice();
    for (const p of [0, 1, 2, 9, 17, 31, 40]) current[p * pageSize]! ^= 1;
    const writes: Array<[number, number]> = [];
    class Spy extends Uint8Array {
      override set(array: ArrayLike<number>, offset = 0): void {
        writes.push([offset, offset + array.length]);
        super.set(array, offset);
      }
    }
    const spy = new Spy(shadow);
    const result = scanDirty(current, spy, pageSize, { refresh: true });
    expect(result.count).toBe(7);
    // Neighbouring dirty pages are coalesced; every write covers dirty pages only.
    expect(writes).toEqual([
      [0, 192],
      [576, 640],
      [1088, 1152],
      [1984, 2048],
      [2560, 2570],
    ]);
    expect(Buffer.compare(spy, current)).toBe(0);
  });

  test("empty regions and identical inputs", () => {
    expect(scanDirty(new Uint8Array(0), new Uint8Array(0), 4096)).toEqual({ count: 0, bitmap: new Uint8Array(0) });
    const same = noise(10_000, 5);
    const result = scanDirty(same, same, 128, { refresh: true });
    expect(result.count).toBe(0);
    expect(result.bitmap.length).toBe(bitmapBytes(pageCount(10_000, 128)));
  });

  test("EINVAL: bad page size, length mismatch, short bitmap, non-byte arrays", () => {
    const a = new Uint8Array(8192);
    for (const bad of [0, 32, 100, 4095, 2 ** 21, Number.NaN]) expectEinval(() => scanDirty(a, a.slice(), bad));
    expectEinval(() => scanDirty(a, new Uint8Array(8191), 4096));
    expectEinval(() => scanDirty(a, a.slice(), 64, { bitmap: new Uint8Array(15) }));
    expect(() => scanDirty(a, a.slice(), 64, { bitmap: new Uint8Array(16) })).not.toThrow();
    expectEinval(() => scanDirty(a as unknown as Uint8Array, new Uint16Array(4096) as unknown as Uint8Array, 4096));
  });
});

describe("scanZero", () => {
  test.prop([scenarioArb, placeArb], { numRuns: 300 })(
    "matches the reference wherever the data lives (changes at page edges, sparse and dense)",
    (s, place) => {
      const data = zeroRegion(s);
      const pages = pageCount(s.length, s.pageSize);
      const expected = scanZeroReference(data, s.pageSize);
      withBlocks((blocks) => {
        const result = scanZero(blocks.place(data, place).bytes, s.pageSize);
        expect(result.count).toBe(expected.count);
        expect(popcount(result.bitmap)).toBe(result.count);
        expectBitmap(result.bitmap, expected.bitmap, pages);
      });
    },
  );

  test.prop([scenarioArb], { numRuns: 40 })("random data has no zero pages; an all-zero region is all zero", (s) => {
    const pages = pageCount(s.length, s.pageSize);
    // Random bytes: a page of >= 64 bytes is all zero with negligible probability, but the tail
    // may be tiny, so compare with the reference rather than assume 0.
    const data = noise(s.length, s.seed);
    expect(scanZero(data, s.pageSize).count).toBe(scanZeroReference(data, s.pageSize).count);
    const zeros = scanZero(new Uint8Array(s.length), s.pageSize);
    expect(zeros.count).toBe(pages);
    expectBitmap(zeros.bitmap, scanZeroReference(new Uint8Array(s.length), s.pageSize).bitmap, pages);
  });

  test.prop([scenarioArb, placeArb, fc.integer({ min: 0, max: 5 })], { numRuns: 50 })(
    "fills a caller-provided bitmap without writing past its bytes",
    (s, mapPlace, slack) => {
      const data = zeroRegion(s);
      const pages = pageCount(s.length, s.pageSize);
      const expected = scanZeroReference(data, s.pageSize);
      withBlocks((blocks) => {
        const bitmap = blocks.place(new Uint8Array(bitmapBytes(pages) + slack).fill(0xff), mapPlace).bytes;
        const result = scanZero(data, s.pageSize, { bitmap });
        expect(result.count).toBe(expected.count);
        expectBitmap(result.bitmap, expected.bitmap, pages);
        expect(Array.from(result.bitmap.subarray(bitmapBytes(pages)))).toEqual(new Array(slack).fill(0xff));
      });
    },
  );

  test("staged data larger than one window", () => {
    for (const pageSize of [64, 4096, 1 << 20]) {
      const length = 9 * (1 << 20) + 100;
      const data = new Uint8Array(length);
      for (const at of [1 << 20, (1 << 20) - 1, 8 << 20, length - 1]) data[at] = 7;
      const expected = scanZeroReference(data, pageSize);
      const result = scanZero(data, pageSize);
      expect(result.count).toBe(expected.count);
      expectBitmap(result.bitmap, expected.bitmap, pageCount(length, pageSize));
    }
  });

  test("EINVAL: bad page size, short bitmap", () => {
    const a = new Uint8Array(1000);
    for (const bad of [0, 48, 96, 2 ** 21]) expectEinval(() => scanZero(a, bad));
    expectEinval(() => scanZero(a, 64, { bitmap: new Uint8Array(1) }));
    expect(scanZero(a, 64, { bitmap: new Uint8Array(2) }).count).toBe(16);
  });
});

describe("scanHash", () => {
  /** Hashes of `data` as left by a previous round, 8 LE bytes per page. */
  function hashesOf(data: Uint8Array, pageSize: number): Uint8Array {
    const hashes = new Uint8Array(pageCount(data.length, pageSize) * 8);
    scanHashReference(data, pageSize, hashes);
    return hashes;
  }

  test.prop([scenarioArb, placeArb, placeArb], { numRuns: 25 })(
    "Wasm kernel agrees with per-page calls of the Wasm xxh3_64 export",
    (s, dataPlace, hashPlace) => {
      // Independent of the TS XXH3 reference: checks paging, partial last page, LE storage and
      // the bitmap of scan_hash against the core's own one-shot hash.
      const { current } = dirtyPair(s);
      const pages = pageCount(s.length, s.pageSize);
      const c = core();
      const expectedHashes = new Uint8Array(pages * 8);
      const view = new DataView(expectedHashes.buffer);
      const tmp = allocate(s.length);
      try {
        tmp.bytes.set(current);
        for (let p = 0; p < pages; p++) {
          const start = p * s.pageSize;
          const end = Math.min(start + s.pageSize, s.length);
          view.setBigUint64(p * 8, BigInt.asUintN(64, c.exports.xxh3_64(tmp.ptr + start, end - start, 0n)), true);
        }
      } finally {
        tmp.free();
      }
      withBlocks((blocks) => {
        // Stale hashes: every page should be reported (unless its stored value happens to match).
        const stale = new Uint8Array(pages * 8);
        const hashes = blocks.place(stale.slice(), hashPlace);
        const data = blocks.place(current, dataPlace);
        const result = scanHash(data.bytes, s.pageSize, hashes.bytes);
        const after = hashes.bytes.slice();
        expect(Array.from(after)).toEqual(Array.from(expectedHashes));
        let changed = 0;
        for (let p = 0; p < pages; p++) {
          const differs = !stale.subarray(p * 8, p * 8 + 8).every((b, i) => b === expectedHashes[p * 8 + i]);
          expect(isPageSet(result.bitmap, p)).toBe(differs);
          if (differs) changed++;
        }
        expect(result.count).toBe(changed);
      });
    },
  );

  // These compare the Wasm kernel with the pure-TS reference; both depend on XXH3 (the Wasm
  // kernel and the TS reference of assembly/xxh3.ts and src/core/reference/xxh3.ts).
  test.prop([scenarioArb, placeArb, placeArb], { numRuns: 80 })(
    "matches the reference: only changed pages are reported and their hashes updated",
    (s, dataPlace, hashPlace) => {
      const { current, shadow } = dirtyPair(s);
      const pages = pageCount(s.length, s.pageSize);
      const previous = hashesOf(shadow, s.pageSize);
      const refHashes = previous.slice();
      const expected = scanHashReference(current, s.pageSize, refHashes);
      withBlocks((blocks) => {
        const hashes = blocks.place(previous.slice(), hashPlace);
        const data = blocks.place(current, dataPlace);
        const result = scanHash(data.bytes, s.pageSize, hashes.bytes);
        expect(result.count).toBe(expected.count);
        expectBitmap(result.bitmap, expected.bitmap, pages);
        expect(Buffer.compare(hashes.bytes, refHashes)).toBe(0);
        // A second round over the same data finds nothing.
        expect(scanHash(data.bytes, s.pageSize, hashes.bytes).count).toBe(0);
      });
    },
  );

  test("BigUint64Array hashes in the reference match the Uint8Array form", () => {
    const data = noise(64 * 20 + 5, 3);
    const big = new BigUint64Array(21);
    const bytes = new Uint8Array(21 * 8);
    const a = scanHashReference(data, 64, big);
    const b = scanHashReference(data, 64, bytes);
    expect(a).toEqual(b);
    expect(new Uint8Array(big.buffer)).toEqual(bytes);
  });

  test("staged data larger than one window", () => {
    const pageSize = 4096;
    const length = 3 * (1 << 20) + 77;
    const data = noise(length, 11);
    const previous = hashesOf(data, pageSize);
    for (const at of [0, (1 << 20) - 1, 1 << 20, length - 1]) data[at]! ^= 0x80;
    const refHashes = previous.slice();
    const expected = scanHashReference(data, pageSize, refHashes);
    const hashes = previous.slice();
    const result = scanHash(data, pageSize, hashes);
    expect(result.count).toBe(expected.count);
    expectBitmap(result.bitmap, expected.bitmap, pageCount(length, pageSize));
    expect(Buffer.compare(hashes, refHashes)).toBe(0);
  });

  test("EINVAL: bad page size, short hashes, short bitmap", () => {
    const a = new Uint8Array(1000);
    expectEinval(() => scanHash(a, 100, new Uint8Array(80)));
    expectEinval(() => scanHash(a, 64, new Uint8Array(16 * 8 - 1)));
    expectEinval(() => scanHash(a, 64, new Uint8Array(16 * 8), { bitmap: new Uint8Array(1) }));
    const ok: ScanResult = scanHash(a, 64, new Uint8Array(16 * 8), { bitmap: new Uint8Array(2) });
    expect(ok.bitmap.length).toBe(2);
  });
});
