// Format 1.1 compressed streams: golden bytes, round trips against the pure-TS encoder and
// reader, the choices the encoder makes, and malformed LZ4 records (typed errors only).
import { fc, test } from "@fast-check/vitest";
import { describe, expect } from "vitest";
import { isCorruptionCode, MigrationError } from "../../src/core/errors.js";
import { stagingPool } from "../../src/codec/staging-pool.js";
import { core } from "../../src/core/instance.js";
import { type DataRecord, StreamDecoder } from "../../src/codec/decoder.js";
import { createEncoder } from "../../src/codec/encoder.js";
import { encodeSnapshotReference } from "../../src/codec/reference.js";
import { createDecoder, decodeSnapshot, encodeSnapshot, encodeSnapshotWithSummary } from "../../src/codec/snapshot.js";
import { concat, fromHex, hex, referenceDecode, reframe, splitStream, StreamBuilder, Tag } from "./stream-builder.js";

// ---------------------------------------------------------------------------------------------
// Golden stream (docs/FORMAT.md, "Worked example, compressed"): 256 bytes, region "s", 64-byte
// pages, records of up to 192 bytes. Page 0 is "migstream " repeated, page 1 is zero, pages 2-3
// are 0xAB.

const GOLDEN_STATE = (() => {
  const state = new Uint8Array(256);
  const text = "migstream ";
  for (let i = 0; i < 64; i++) state[i] = text.charCodeAt(i % text.length);
  state.fill(0xab, 128, 256);
  return state;
})();
const GOLDEN_OPTIONS = { regions: [{ name: "s", size: 256 }], pageSize: 64, maxRecordPayload: 192, compress: "lz4" } as const;

const GOLDEN = fromHex(`
  894D49470D0A1A0A 0100 0100 43000000 02000000 01 06 0100 0001000000000000 C0000000 0000 0000
  0000000000000000 0100 73 0001000000000000 BE148339DB5F0CD7
  04 00 0000 18000000 00000000 01000000 0000000000000000
     40000000 AF 6D696773747265616D20 0A00 1E 50 206D696773
     AA883E00F7A427CA
  02 00 0000 00000000 01000000 01000000 4000000000000000 D5F51703420051DC
  04 00 0000 0F000000 02000000 02000000 8000000000000000
     80000000 1F AB 0100 67 50 ABABABABAB
     9D36663C2D5617B5
  12 00 0000 18000000 03000000 00000000 0000000000000000
     0300000000000000 CA00000000000000 71D7974FF63C46CF EF55B039AA2C9681
`);

describe("compressed golden stream (format 1.1)", () => {
  test("encodeSnapshot with compress lz4 writes exactly the pinned bytes, as the reference encoder does", () => {
    expect(hex(encodeSnapshot(GOLDEN_STATE, GOLDEN_OPTIONS))).toBe(hex(GOLDEN));
    expect(hex(encodeSnapshotReference(GOLDEN_STATE, GOLDEN_OPTIONS))).toBe(hex(GOLDEN));
  });

  test("the golden bytes decode, at once and a byte at a time, and the reference reader agrees", () => {
    expect(hex(decodeSnapshot(GOLDEN))).toBe(hex(GOLDEN_STATE));
    const decoder = createDecoder();
    for (let i = 0; i < GOLDEN.length; i++) decoder.push(GOLDEN.subarray(i, i + 1));
    decoder.end();
    expect(hex(decoder.result())).toBe(hex(GOLDEN_STATE));
    const summary = decoder.summary();
    expect(summary.header!.minor).toBe(1);
    expect(summary.header!.compression).toBe("lz4");
    expect(summary.records).toMatchObject({ pages: 0, lz4: 2, zero: 1 });
    expect(summary.pages).toEqual({ raw: 0, lz4: 3, zero: 1, delta: 0 });
    expect(summary.compressedBytes).toBe(0x18 + 0x0f);
    const ref = referenceDecode(GOLDEN);
    expect(hex(ref.state)).toBe(hex(GOLDEN_STATE));
    expect(ref.counts.lz4).toBe(2);
  });

  test("every truncation of the golden stream is incomplete or corrupt, never a result", () => {
    for (let cut = 0; cut < GOLDEN.length; cut++) {
      let error: unknown;
      try {
        decodeSnapshot(GOLDEN.subarray(0, cut));
      } catch (e) {
        error = e;
      }
      expect(error, `cut at ${cut}`).toBeInstanceOf(MigrationError);
      expect(["ENODATA", "EBADMSG"]).toContain((error as MigrationError).code);
    }
  });

  test("uncompressed streams are still written as 1.0 (their golden bytes do not change)", () => {
    const stream = encodeSnapshot(GOLDEN_STATE, { ...GOLDEN_OPTIONS, compress: "none" });
    expect(stream[10]).toBe(0);
    expect(stream[16]).toBe(0);
    expect(splitStream(stream).records.every((r) => r.tag !== Tag.LZ4)).toBe(true);
  });
});

// ---------------------------------------------------------------------------------------------
// Property-generated states of mixed pages

type PageKind = "zero" | "byte" | "sparse" | "random" | "text";
const pageKinds: PageKind[] = ["zero", "byte", "sparse", "random", "text"];

function fillPage(page: Uint8Array, kind: PageKind, seed: number): void {
  let x = seed | 1;
  const next = (): number => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
  if (kind === "byte") page.fill(1 + (seed & 0x7f));
  else if (kind === "sparse") for (let j = 0; j < 3; j++) page[next() % page.length] = next() & 0xff;
  else if (kind === "random") for (let j = 0; j < page.length; j++) page[j] = next() & 0xff;
  else if (kind === "text") {
    const words = ["dirty ", "page ", "vfio ", "state "];
    let j = 0;
    while (j < page.length) for (const c of words[next() % 4]!) if (j < page.length) page[j++] = c.charCodeAt(0);
  }
}

const stateArb = fc
  .record({
    pageSize: fc.constantFrom(64, 256, 4096),
    kinds: fc.array(fc.constantFrom(...pageKinds), { minLength: 0, maxLength: 40 }),
    tail: fc.integer({ min: 0, max: 63 }),
    seed: fc.integer(),
    payloadPages: fc.integer({ min: 1, max: 20 }),
    checksum: fc.constantFrom("xxh3" as const, "crc32c" as const),
  })
  .map(({ pageSize, kinds, tail, seed, payloadPages, checksum }) => {
    const size = Math.max(0, kinds.length * pageSize - (kinds.length > 0 ? tail : 0));
    const state = new Uint8Array(size);
    kinds.forEach((kind, i) => fillPage(state.subarray(i * pageSize, Math.min(size, (i + 1) * pageSize)), kind, seed + i));
    return { state, options: { pageSize, maxRecordPayload: pageSize * payloadPages, checksum, compress: "lz4" as const } };
  });

describe("compressed streams", () => {
  test.prop([stateArb], { numRuns: 80 })("byte-identical to the reference encoder; decode here and in the reference reader", ({ state, options }) => {
    const { stream, summary } = encodeSnapshotWithSummary(state, options);
    expect(hex(stream)).toBe(hex(encodeSnapshotReference(state, options)));
    expect(hex(decodeSnapshot(stream))).toBe(hex(state));
    const ref = referenceDecode(stream);
    expect(hex(ref.state)).toBe(hex(state));
    expect(summary.pages.lz4).toBe(ref.pages.lz4);
    expect(summary.compressed.records).toBe(ref.counts.lz4);
    // Never larger than the same stream uncompressed.
    expect(stream.length).toBeLessThanOrEqual(encodeSnapshot(state, { ...options, compress: "none" }).length);
  });

  test.prop([stateArb, fc.array(fc.nat(), { maxLength: 12 })], { numRuns: 40 })(
    "incremental streams: deltas and compression together",
    ({ state, options }, flips) => {
      const base = state.slice();
      for (const f of flips) if (base.length > 0) base[f % base.length]! ^= 1 + (f & 0x7f);
      const stream = encodeSnapshot(state, { ...options, base });
      expect(hex(stream)).toBe(hex(encodeSnapshotReference(state, { ...options, base })));
      expect(hex(decodeSnapshot(stream, { base }))).toBe(hex(state));
    },
  );

  test("targets that apply records themselves receive the decoded pages, with the wire size", () => {
    const state = new Uint8Array(64 * 1024);
    for (let i = 0; i < state.length; i++) state[i] = (i >> 9) & 0xff;
    const stream = encodeSnapshot(state, { compress: "lz4" });
    const out = new Uint8Array(state.length);
    const seen: DataRecord[] = [];
    const decoder = new StreamDecoder({
      open: () => undefined,
      apply(record) {
        seen.push({ ...record, payload: record.payload.slice() });
        out.set(record.payload, record.offset);
      },
      commit() {},
      abort() {},
    });
    decoder.push(stream, true);
    expect(hex(out)).toBe(hex(state));
    expect(seen.length).toBe(1);
    expect(seen[0]!.tag).toBe(Tag.PAGES);
    expect(seen[0]!.packed).toBe(splitStream(stream).records[0]!.length);
    expect(seen[0]!.packed!).toBeLessThan(state.length / 10);
  });

  test("random data bails out: raw records, no compressed ones", () => {
    const state = new Uint8Array(2 << 20);
    let x = 7;
    for (let i = 0; i < state.length; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      state[i] = x & 0xff;
    }
    const { stream, summary } = encodeSnapshotWithSummary(state, { compress: "lz4" });
    expect(summary.compressed.records).toBe(0);
    expect(summary.pages.raw).toBe(512);
    expect(hex(decodeSnapshot(stream).subarray(0, 64))).toBe(hex(state.subarray(0, 64)));
  });

  test("the push encoder compresses across windows like encodeSnapshot", () => {
    const state = new Uint8Array(3 * 1024 * 1024 + 100);
    for (let i = 0; i < state.length; i++) state[i] = (i * 31) >>> 12;
    const chunks: Uint8Array[] = [];
    const encoder = createEncoder({ size: state.length, compress: "lz4", ondata: (c) => chunks.push(c) });
    for (let at = 0; at < state.length; at += 100_003) encoder.push(state.subarray(at, at + 100_003));
    encoder.push(new Uint8Array(0), true);
    expect(hex(concat(...chunks))).toBe(hex(encodeSnapshot(state, { compress: "lz4" })));
  });
});

// ---------------------------------------------------------------------------------------------
// Malformed LZ4 records (valid checksums): EBADMSG naming the record and the block's byte

const HEADER = { regions: [{ name: "s", size: 256 }], pageSize: 64, maxRecordPayload: 192, minor: 1, flags: 0x2 };

function lz4Record(block: number[], uncompressed = 64): Uint8Array {
  return concat(Uint8Array.of(uncompressed & 0xff, uncompressed >> 8, 0, 0), Uint8Array.from(block));
}

function decodeError(stream: Uint8Array): MigrationError {
  try {
    decodeSnapshot(stream);
  } catch (error) {
    expect(error).toBeInstanceOf(MigrationError);
    return error as MigrationError;
  }
  throw new Error("decoded");
}

describe("malformed LZ4 records", () => {
  const stream = (payload: Uint8Array, pages = 1, flags = 0x2): Uint8Array => {
    const b = new StreamBuilder({ ...HEADER, flags, minor: flags === 0 ? 0 : 1 });
    b.record({ tag: Tag.LZ4, region: 0, offset: 0, pages, payload });
    b.zero(0, pages * 64, 4 - pages);
    return b.end().bytes();
  };
  const recordAt = 67;
  const blockAt = recordAt + 24 + 4;

  test("a valid hand-made record decodes", () => {
    const state = decodeSnapshot(stream(lz4Record([0x1f, 0x61, 0x01, 0x00, 0x27, 0x50, 0x61, 0x61, 0x61, 0x61, 0x61])));
    expect(hex(state.subarray(0, 64))).toBe("61".repeat(64));
  });

  test.each([
    ["offset 0", [0x1f, 0x61, 0x00, 0x00, 0x27, 0x50, 0x61, 0x61, 0x61, 0x61, 0x61], 2],
    ["offset before the output's start", [0x1f, 0x61, 0x02, 0x00, 0x27, 0x50, 0x61, 0x61, 0x61, 0x61, 0x61], 2],
    ["match past the pages", [0x1f, 0x61, 0x01, 0x00, 0x40, 0x50, 0x61, 0x61, 0x61, 0x61, 0x61], 0],
    ["literals past the block", [0x60, 0x61], 0],
    ["truncated sequence", [0x1f, 0x61, 0x01], 2],
    ["decodes to fewer bytes", [0x10, 0x61], 2],
  ])("%s: EBADMSG at record 0, the block's byte", (_name, block, at) => {
    const error = decodeError(stream(lz4Record(block)));
    expect(error.code).toBe("EBADMSG");
    expect(error.recordIndex).toBe(0);
    expect(error.byteOffset).toBe(blockAt + at);
    expect(error.message).toMatch(/LZ4/);
  });

  test("an uncompressed length other than the covered length, or a payload under 5 bytes", () => {
    expect(decodeError(stream(lz4Record([0x10, 0x61], 65)))).toMatchObject({ code: "EBADMSG", recordIndex: 0, byteOffset: recordAt });
    expect(decodeError(stream(Uint8Array.of(64, 0, 0, 0)))).toMatchObject({ code: "EBADMSG", recordIndex: 0, byteOffset: recordAt });
  });

  test("an LZ4 record in a stream whose header does not allow compression is an unknown mandatory record", () => {
    const error = decodeError(stream(lz4Record([0x1f, 0x61, 0x01, 0x00, 0x27, 0x50, 0x61, 0x61, 0x61, 0x61, 0x61]), 1, 0));
    expect(error).toMatchObject({ code: "EBADMSG", recordIndex: 0, byteOffset: recordAt });
    expect(error.message).toMatch(/unknown mandatory/);
  });

  test("a malformed block never reaches a target that applies records itself", () => {
    const applied: number[] = [];
    const decoder = new StreamDecoder({ open: () => undefined, apply: (r) => applied.push(r.tag), commit() {}, abort() {} });
    expect(() => decoder.push(stream(lz4Record([0x1f, 0x61, 0x00, 0x00, 0x27, 0x50, 0x61, 0x61, 0x61, 0x61, 0x61])), true)).toThrow(MigrationError);
    expect(applied).toEqual([]);
  });
});

// ---------------------------------------------------------------------------------------------
// Mutation sweep: compressed streams with their checksums recomputed (so the LZ4 decoder, not
// the checksum, meets the damage): typed corruption errors or an exact decode, nothing else.

describe("mutation sweep of compressed streams", () => {
  const state = (() => {
    const s = new Uint8Array(64 * 24);
    for (let p = 0; p < 24; p++) fillPage(s.subarray(p * 64, p * 64 + 64), pageKinds[p % pageKinds.length]!, p * 77);
    return s;
  })();
  const options = { pageSize: 64, maxRecordPayload: 64 * 6, compress: "lz4" as const };
  const original = encodeSnapshot(state, options);
  const { header, records } = splitStream(original);

  test("the sample has LZ4 records", () => {
    expect(records.filter((r) => r.tag === Tag.LZ4).length).toBeGreaterThan(1);
  });

  test.prop([fc.nat(), fc.array(fc.tuple(fc.nat(), fc.nat(255)), { minLength: 1, maxLength: 3 }), fc.integer({ min: -3, max: 3 })], { numRuns: 400 })(
    "re-checksummed payload mutations: a corruption error exactly when the reference reader refuses, else its state",
    (which, edits, resize) => {
      const lz4 = records.filter((r) => r.tag === Tag.LZ4);
      const target = lz4[which % lz4.length]!;
      const payload = target.payload.slice();
      for (const [at, value] of edits) payload[4 + (at % Math.max(1, payload.length - 4))] = value;
      const resized = resize >= 0 ? concat(payload, new Uint8Array(resize)) : payload.subarray(0, Math.max(0, payload.length + resize));
      const mutated = reframe(
        header,
        records.map((r) => (r === target ? { ...r, payload: resized } : r)).map((r) => recordBytes(r)),
        "xxh3",
      );
      // Staging a successful decode gives back is kept for reuse: count without it.
      stagingPool.clear();
      const before = core().allocatedBytes;
      let reference: Uint8Array | undefined;
      try {
        reference = referenceDecode(mutated).state;
      } catch {
        reference = undefined;
      }
      try {
        const decoded = decodeSnapshot(mutated);
        expect(reference && hex(reference)).toBe(hex(decoded));
      } catch (error) {
        expect(reference).toBeUndefined();
        expect(error).toBeInstanceOf(MigrationError);
        expect(isCorruptionCode((error as MigrationError).code)).toBe(true);
        expect((error as MigrationError).recordIndex).toBeTypeOf("number");
        expect((error as MigrationError).byteOffset).toBeTypeOf("number");
      }
      stagingPool.clear();
      expect(core().allocatedBytes).toBe(before);
    },
  );
});

/** A record view back to bytes (reframe rebuilds sequence numbers, lengths and checksums). */
function recordBytes(r: { tag: number; flags: number; region: number; pages: number; offset: bigint; payload: Uint8Array }): Uint8Array {
  const head = new Uint8Array(24);
  const v = new DataView(head.buffer);
  v.setUint8(0, r.tag);
  v.setUint8(1, r.flags);
  v.setUint16(2, r.region, true);
  v.setUint32(4, r.payload.length, true);
  v.setUint32(12, r.pages, true);
  v.setBigUint64(16, r.offset, true);
  return concat(head, r.payload, new Uint8Array(8));
}
