import { fc, test } from "@fast-check/vitest";
import { compressSync, uncompressSync } from "lz4-napi";
import { describe, expect } from "vitest";
import { allocate } from "../../src/core/buffer.js";
import { MigrationError } from "../../src/core/errors.js";
import { lz4CompressBlock, lz4DecompressBlock } from "../../src/core/lz4.js";
import { lz4CompressReference, lz4DecompressReference } from "../../src/core/reference/lz4.js";

// ---------------------------------------------------------------------------------------------
// Inputs from incompressible to highly repetitive

function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
}

type Kind = "random" | "zero" | "byte" | "text" | "sparse" | "periodic" | "mixed";
interface Spec {
  kind: Kind;
  length: number;
  seed: number;
  period: number;
}

/** Deterministic data of one kind, built cheaply even at several MiB. */
function makeInput({ kind, length, seed, period }: Spec): Uint8Array {
  const next = rng(seed);
  const out = new Uint8Array(length);
  switch (kind) {
    case "random":
      for (let i = 0; i < length; i++) out[i] = next() & 0xff;
      break;
    case "zero":
      break;
    case "byte":
      out.fill(seed & 0xff);
      break;
    case "text": {
      const words = ["page", "dirty", "region", "vfio", "state", " ", "\n", "migrate", "the", "of"];
      let i = 0;
      while (i < length) {
        const w = words[next() % words.length]!;
        for (let k = 0; k < w.length && i < length; k++) out[i++] = w.charCodeAt(k);
      }
      break;
    }
    case "sparse":
      for (let i = 0; i < length; i += 1 + (next() % 300)) out[i] = next() & 0xff;
      break;
    case "periodic": {
      const unit = new Uint8Array(Math.max(1, period));
      for (let i = 0; i < unit.length; i++) unit[i] = next() & 0xff;
      for (let i = 0; i < length; i++) out[i] = unit[i % unit.length]!;
      break;
    }
    case "mixed":
      // 4 KiB pages: zero, repeated byte, a few bytes set, random.
      for (let p = 0; p * 4096 < length; p++) {
        const page = out.subarray(p * 4096, Math.min(length, p * 4096 + 4096));
        const k = next() % 4;
        if (k === 1) page.fill(next() & 0xff);
        else if (k === 2) for (let j = 0; j < 4; j++) page[next() % page.length] = next() & 0xff;
        else if (k === 3) for (let j = 0; j < page.length; j++) page[j] = next() & 0xff;
      }
      break;
  }
  return out;
}

const kinds: Kind[] = ["random", "zero", "byte", "text", "sparse", "periodic", "mixed"];
const specArb = (maxLength: number): fc.Arbitrary<Spec> =>
  fc.record({
    kind: fc.constantFrom(...kinds),
    length: fc.oneof(fc.integer({ min: 0, max: 40 }), fc.integer({ min: 0, max: maxLength })),
    seed: fc.integer({ min: 1, max: 0x7fffffff }),
    period: fc.integer({ min: 1, max: 70000 }),
  });

/** lz4-napi's framing: a 4-byte little-endian length, then the raw block. */
function napiFrame(block: Uint8Array, size: number): Buffer {
  const framed = Buffer.alloc(4 + block.length);
  framed.writeUInt32LE(size, 0);
  framed.set(block, 4);
  return framed;
}

const same = (a: Uint8Array, b: Uint8Array): boolean => Buffer.compare(a, b) === 0;

function errorOf(fn: () => unknown): unknown {
  try {
    fn();
  } catch (error) {
    return error;
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------

describe("lz4 block codec", () => {
  test("empty input is one zero token", () => {
    expect([...lz4CompressBlock(new Uint8Array(0))]).toEqual([0]);
    expect(lz4DecompressBlock(new Uint8Array([0]), 0).length).toBe(0);
  });

  test.prop([specArb(300_000)], { numRuns: 60 })("kernel = twin, and lz4-napi decodes it", (spec) => {
    const data = makeInput(spec);
    const block = lz4CompressBlock(data);
    expect(same(block, lz4CompressReference(data)!)).toBe(true);
    expect(same(uncompressSync(napiFrame(block, data.length)), data)).toBe(true);
    expect(same(lz4DecompressBlock(block, data.length), data)).toBe(true);
  });

  test.prop([specArb(300_000)], { numRuns: 60 })("lz4-napi's blocks decode here and in the twin", (spec) => {
    const data = makeInput(spec);
    const framed = compressSync(Buffer.from(data.buffer, data.byteOffset, data.length));
    expect(framed.readUInt32LE(0)).toBe(data.length);
    const block = framed.subarray(4);
    expect(same(lz4DecompressBlock(block, data.length), data)).toBe(true);
    const twin = lz4DecompressReference(block, data.length);
    expect(twin instanceof Uint8Array && same(twin, data)).toBe(true);
  });

  test.each(kinds)("several MiB of %s data round-trip both ways", (kind) => {
    const data = makeInput({ kind, length: 3 * 1024 * 1024 + 77, seed: 99, period: 4099 });
    const block = lz4CompressBlock(data);
    expect(same(uncompressSync(napiFrame(block, data.length)), data)).toBe(true);
    const napi = compressSync(Buffer.from(data.buffer));
    expect(same(lz4DecompressBlock(napi.subarray(4), data.length), data)).toBe(true);
    // Compression ratio close to lz4-napi's (same family of greedy compressor).
    expect(block.length).toBeLessThanOrEqual(Math.ceil((napi.length - 4) * 1.1) + 16);
  });

  test("end-of-block rules: last 5 bytes literals, last match starts 12+ bytes before the end", () => {
    for (let len = 0; len < 200; len++) {
      const data = new Uint8Array(len).fill(0x41);
      const block = lz4CompressBlock(data);
      // Walk the sequences.
      let ip = 0;
      let op = 0;
      let lastMatchStart = -1;
      let lastLiterals = 0;
      while (true) {
        const token = block[ip++]!;
        let lit = token >> 4;
        if (lit === 15) for (let b = 255; b === 255; ) lit += b = block[ip++]!;
        ip += lit;
        op += lit;
        lastLiterals = lit;
        if (ip === block.length) break;
        ip += 2;
        let m = token & 15;
        if (m === 15) for (let b = 255; b === 255; ) m += b = block[ip++]!;
        lastMatchStart = op;
        op += m + 4;
      }
      expect(op).toBe(len);
      expect(lastLiterals).toBeGreaterThanOrEqual(Math.min(5, len));
      if (lastMatchStart >= 0) expect(len - lastMatchStart).toBeGreaterThanOrEqual(12);
      expect(same(lz4DecompressBlock(block, len), data)).toBe(true);
    }
  });

  test("reads and writes core-resident buffers in place", () => {
    const data = makeInput({ kind: "text", length: 10000, seed: 5, period: 1 });
    const buf = allocate(data.length);
    try {
      buf.bytes.set(data);
      const block = lz4CompressBlock(buf.bytes);
      expect(same(lz4DecompressBlock(block, data.length), data)).toBe(true);
    } finally {
      buf.free();
    }
  });

  test("arguments are checked", () => {
    expect((errorOf(() => lz4DecompressBlock(new Uint8Array([0]), -1)) as MigrationError).code).toBe("EINVAL");
    expect((errorOf(() => lz4DecompressBlock(new Uint8Array([0]), 1.5)) as MigrationError).code).toBe("EINVAL");
    expect((errorOf(() => lz4CompressBlock([1, 2] as unknown as Uint8Array)) as MigrationError).code).toBe("EINVAL");
  });
});

describe("lz4 malformed blocks: EBADMSG with the byte offset, kernel and twin agree", () => {
  const cases: Array<[string, number[], number, number, string]> = [
    // name, block, declared size, fault offset, twin problem
    ["empty block", [], 0, 0, "truncated"],
    ["offset 0", [0x10, 0x61, 0x00, 0x00, 0x00], 10, 2, "offset zero"],
    ["offset before the output's start", [0x10, 0x61, 0x02, 0x00, 0x00], 10, 2, "offset before start"],
    ["literals past the block's end", [0x50, 0x61, 0x62], 5, 0, "literals past input"],
    ["literals past the declared size", [0x30, 0x61, 0x62, 0x63], 2, 0, "literals past output"],
    ["match past the declared size", [0x1f, 0x61, 0x01, 0x00, 0x10, 0x00], 20, 0, "match past output"],
    ["truncated offset", [0x10, 0x61, 0x01], 10, 2, "truncated"],
    ["truncated length bytes", [0xf0], 100, 0, "truncated"],
    ["a literal length past the block", [0xf0, 0xff], 300, 0, "literals past input"],
    ["truncated after a match", [0x10, 0x61, 0x01, 0x00], 5, 4, "truncated"],
    ["decodes to fewer bytes", [0x20, 0x61, 0x62], 3, 3, "short"],
    ["decodes to more bytes (declared 0)", [0x10, 0x61], 0, 0, "literals past output"],
  ];
  test.each(cases)("%s", (_name, bytes, size, offset, problem) => {
    const block = Uint8Array.from(bytes);
    const error = errorOf(() => lz4DecompressBlock(block, size));
    expect(error).toBeInstanceOf(MigrationError);
    expect((error as MigrationError).code).toBe("EBADMSG");
    expect((error as MigrationError).byteOffset).toBe(offset);
    expect(lz4DecompressReference(block, size)).toEqual({ problem, offset });
  });

  test("a huge literal length is refused without reading past the block", () => {
    const block = new Uint8Array(2000).fill(255);
    block[0] = 0xf0;
    const error = errorOf(() => lz4DecompressBlock(block, 1 << 20)) as MigrationError;
    expect(error.code).toBe("EBADMSG");
  });

  test("a declared size beyond 255x the block is refused before allocating", () => {
    const error = errorOf(() => lz4DecompressBlock(new Uint8Array([0]), 1 << 30)) as MigrationError;
    expect(error.code).toBe("EBADMSG");
  });

  test.prop([specArb(20_000), fc.array(fc.tuple(fc.nat(), fc.nat(255)), { minLength: 1, maxLength: 4 }), fc.integer({ min: -3, max: 3 })], {
    numRuns: 300,
  })("mutated and truncated blocks: a typed error or a decoding that agrees with the twin", (spec, flips, sizeDelta) => {
    const data = makeInput(spec);
    const block = lz4CompressBlock(data).slice();
    for (const [at, value] of flips) block[at % block.length] = value;
    const cut = block.subarray(0, Math.max(0, block.length - (flips[0]![1] % 3)));
    const size = Math.max(0, data.length + sizeDelta);
    let ours: Uint8Array | MigrationError;
    try {
      ours = lz4DecompressBlock(cut, size);
    } catch (error) {
      expect(error).toBeInstanceOf(MigrationError);
      ours = error as MigrationError;
    }
    const twin = lz4DecompressReference(cut, size);
    if (ours instanceof MigrationError) {
      expect(ours.code).toBe("EBADMSG");
      if (size <= cut.length * 255 + 16) {
        expect(twin instanceof Uint8Array).toBe(false);
        expect(ours.byteOffset).toBe((twin as { offset: number }).offset);
      }
    } else {
      expect(twin instanceof Uint8Array && same(twin, ours)).toBe(true);
    }
  });
});
