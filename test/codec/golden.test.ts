// Golden streams: every byte pinned, checksums computed with the pure-TS references (not the Wasm
// core) and written down as literals once verified. See docs/FORMAT.md.
//
// Note on FORMAT.md section 7: its listing says "header (75 bytes)", "4B 00 00 00 header length
// 75", "XXH3-64 of the 67 bytes above" and an END byte count of 75 + 96 + 32 + 40 = 243. The
// fields it lists (and the normative table of section 2: device id at 48, then one region entry
// of 2 + 1 + 8 bytes, then the 8-byte checksum) add up to 59 + 8 = 67 bytes, so the header
// length is 67 (0x43), the checksum covers 59 bytes and the END byte count is 235 (0xEB). The
// bytes below follow the normative layout.
import { describe, expect, test } from "vitest";
import { crc32cReference } from "../../src/core/reference/crc32c.js";
import { xbzrleEncodeReference } from "../../src/core/reference/xbzrle.js";
import { createEncoder } from "../../src/codec/encoder.js";
import { createDecoder, decodeSnapshot, encodeSnapshot, encodeSnapshotWithSummary } from "../../src/codec/snapshot.js";
import { chain, concat, fromHex, hex, splitStream, StreamBuilder, xxh3 } from "./stream-builder.js";

type Field = readonly [hexBytes: string, meaning: string];

/** Checks `stream` field by field, so a failure names the field, then as a whole. */
function expectFields(stream: Uint8Array, fields: readonly Field[]): void {
  let at = 0;
  for (const [bytes, meaning] of fields) {
    const want = fromHex(bytes);
    expect(hex(stream.subarray(at, at + want.length)), `${meaning} at byte ${at}`).toBe(hex(want));
    at += want.length;
  }
  expect(stream.length, "stream length").toBe(at);
  expect(hex(stream)).toBe(hex(concat(...fields.map(([b]) => fromHex(b)))));
}

const u64le = (bytes: Uint8Array, at: number): bigint => new DataView(bytes.buffer, bytes.byteOffset + at, 8).getBigUint64(0, true);

// ---------------------------------------------------------------------------------------------
// FORMAT.md section 7: 200 bytes, one region "s", page size 64, maxRecordPayload 64, no device
// id. Pages 0 and 3 are non-zero, pages 1 and 2 are zero.

const WORKED_STATE = (() => {
  const state = new Uint8Array(200);
  for (let i = 0; i < 64; i++) state[i] = i + 1; // page 0: 01 02 .. 40
  for (let i = 192; i < 200; i++) state[i] = 0xa0 + (i - 192); // page 3 (8 bytes): a0 .. a7
  return state;
})();
const WORKED_OPTIONS = { regions: [{ name: "s", size: 200 }], pageSize: 64, maxRecordPayload: 64 } as const;
const PAGE0 = Array.from({ length: 64 }, (_, i) => (i + 1).toString(16).padStart(2, "0")).join(" ");

/** The header of the worked example, without its checksum, for both algorithms. */
function workedHeader(alg: "01" | "02"): Field[] {
  return [
    ["89 4D 49 47 0D 0A 1A 0A", "magic"],
    ["01 00", "major 1"],
    ["00 00", "minor 0"],
    ["43 00 00 00", "header length 67"],
    ["00 00 00 00", "flags: full stream"],
    [alg, alg === "01" ? "checksum algorithm 1: XXH3-64" : "checksum algorithm 2: CRC32C"],
    ["06", "page shift 6: 64-byte pages"],
    ["01 00", "1 region"],
    ["C8 00 00 00 00 00 00 00", "total state size 200"],
    ["40 00 00 00", "maximum record payload 64"],
    ["00 00", "device id length 0"],
    ["00 00", "reserved"],
    ["00 00 00 00 00 00 00 00", "base identity: none (full stream)"],
    ["01 00", "region 0: name length 1"],
    ["73", 'region 0: name "s"'],
    ["C8 00 00 00 00 00 00 00", "region 0: size 200"],
  ];
}

/** Record fields of the worked example up to (not including) each record's checksum. */
const REC0: Field[] = [
  ["01", "record 0: tag PAGES"],
  ["00", "record 0: flags"],
  ["00 00", "record 0: region 0"],
  ["40 00 00 00", "record 0: payload length 64"],
  ["00 00 00 00", "record 0: sequence 0"],
  ["01 00 00 00", "record 0: page count 1"],
  ["00 00 00 00 00 00 00 00", "record 0: offset 0"],
  [PAGE0, "record 0: payload, page 0 (01 .. 40)"],
];
const REC1: Field[] = [
  ["02", "record 1: tag ZERO"],
  ["00", "record 1: flags"],
  ["00 00", "record 1: region 0"],
  ["00 00 00 00", "record 1: payload length 0"],
  ["01 00 00 00", "record 1: sequence 1"],
  ["02 00 00 00", "record 1: page count 2 (pages 1-2)"],
  ["40 00 00 00 00 00 00 00", "record 1: offset 64"],
];
const REC2: Field[] = [
  ["01", "record 2: tag PAGES"],
  ["00", "record 2: flags"],
  ["00 00", "record 2: region 0"],
  ["08 00 00 00", "record 2: payload length 8 (partial last page)"],
  ["02 00 00 00", "record 2: sequence 2"],
  ["01 00 00 00", "record 2: page count 1"],
  ["C0 00 00 00 00 00 00 00", "record 2: offset 192"],
  ["A0 A1 A2 A3 A4 A5 A6 A7", "record 2: payload, page 3"],
];
const END_HEAD: Field[] = [
  ["12", "END: tag"],
  ["00", "END: flags"],
  ["00 00", "END: region 0"],
  ["18 00 00 00", "END: payload length 24"],
  ["03 00 00 00", "END: sequence 3"],
  ["00 00 00 00", "END: page count 0"],
  ["00 00 00 00 00 00 00 00", "END: offset 0"],
  ["03 00 00 00 00 00 00 00", "END: record count 3 (its own sequence number)"],
  ["EB 00 00 00 00 00 00 00", "END: byte count 235 = 67 + 96 + 32 + 40"],
];

// Checksums, computed with the references below and pinned here.
const XXH3_HEADER = 0xd8862fd464e2bb67n; // XXH3-64 of header bytes [0, 59)
const XXH3_REC0 = 0x39b43200dc9b8126n;
const XXH3_REC1 = 0x06b3521ffa0b34dan;
const XXH3_REC2 = 0x1a9d004f11f5f2a1n;
const XXH3_D3 = 0xf3ef1b359b4c3368n; // digest after records 0-2
const XXH3_END = 0xa8dbd7011202cb77n;

const WORKED_XXH3: Field[] = [
  ...workedHeader("01"),
  ["67 BB E2 64 D4 2F 86 D8", "header checksum: XXH3-64 of the 59 bytes above"],
  ...REC0,
  ["26 81 9B DC 00 32 B4 39", "record 0: checksum, XXH3-64 of its 88 bytes"],
  ...REC1,
  ["DA 34 0B FA 1F 52 B3 06", "record 1: checksum, XXH3-64 of its 24 bytes"],
  ...REC2,
  ["A1 F2 F5 11 4F 00 9D 1A", "record 2: checksum, XXH3-64 of its 32 bytes"],
  ...END_HEAD,
  ["68 33 4C 9B 35 1B EF F3", "END: digest D3"],
  ["77 CB 02 12 01 D7 DB A8", "END: checksum, XXH3-64 of its 48 bytes"],
];

// The CRC32C variant: only the algorithm byte and the checksums differ; the header checksum and
// the digest chain stay XXH3-64 (FORMAT.md 2 and 3.3), and record checksums are zero-extended.
const XXH3_HEADER_CRC = 0xc814ae257b010997n;
const CRC_REC0 = 0xe7f14d15;
const CRC_REC1 = 0x7f6771af;
const CRC_REC2 = 0xc87cbd4b;
const CRC_D3 = 0xfe861e42a46a6db7n;
const CRC_END = 0x53ad1e1a;

const WORKED_CRC32C: Field[] = [
  ...workedHeader("02"),
  ["97 09 01 7B 25 AE 14 C8", "header checksum: XXH3-64 whatever the record algorithm"],
  ...REC0,
  ["15 4D F1 E7 00 00 00 00", "record 0: CRC32C, zero-extended to 64 bits"],
  ...REC1,
  ["AF 71 67 7F 00 00 00 00", "record 1: CRC32C"],
  ...REC2,
  ["4B BD 7C C8 00 00 00 00", "record 2: CRC32C"],
  ...END_HEAD,
  ["B7 6D 6A A4 42 1E 86 FE", "END: digest D3 (XXH3-64 chain over the CRC32C values)"],
  ["1A 1E AD 53 00 00 00 00", "END: CRC32C"],
];

describe("FORMAT.md section 7, the worked example", () => {
  test("encodeSnapshot writes exactly the pinned bytes", () => {
    const stream = encodeSnapshot(WORKED_STATE, WORKED_OPTIONS);
    expectFields(stream, WORKED_XXH3);
    expect(stream.length).toBe(67 + 96 + 32 + 40 + 56);
  });

  test("the pinned checksums are what the reference XXH3 computes", () => {
    const stream = fromHex(WORKED_XXH3.map(([b]) => b).join(""));
    expect(xxh3(stream.subarray(0, 59))).toBe(XXH3_HEADER);
    expect(u64le(stream, 59)).toBe(XXH3_HEADER);
    const { records } = splitStream(stream);
    expect(records.map((r) => r.at)).toEqual([67, 163, 195, 235]);
    const expected = [XXH3_REC0, XXH3_REC1, XXH3_REC2, XXH3_END];
    records.forEach((r, i) => {
      expect(xxh3(r.bytes.subarray(0, r.bytes.length - 8)), `record ${i}`).toBe(expected[i]);
      expect(r.checksum).toBe(expected[i]);
    });
    // D0 = header checksum; D(i+1) = XXH3-64(le64(Di) || le64(checksum i)); END is not chained.
    const d3 = chain(chain(chain(XXH3_HEADER, XXH3_REC0), XXH3_REC1), XXH3_REC2);
    expect(d3).toBe(XXH3_D3);
    expect(u64le(records[3]!.payload, 16)).toBe(XXH3_D3);
  });

  test("the independent builder agrees byte for byte", () => {
    const b = new StreamBuilder({ regions: [{ name: "s", size: 200 }], pageSize: 64, maxRecordPayload: 64 });
    b.pages(0, 0, WORKED_STATE.subarray(0, 64)).zero(0, 64, 2).pages(0, 192, WORKED_STATE.subarray(192)).end();
    expect(hex(b.bytes())).toBe(hex(encodeSnapshot(WORKED_STATE, WORKED_OPTIONS)));
  });

  test("end() after a final push is a no-op; a push after it is still refused", () => {
    const stream = fromHex(WORKED_XXH3.map(([b]) => b).join(""));
    const decoder = createDecoder();
    decoder.push(stream, true);
    decoder.end();
    decoder.end();
    expect(hex(decoder.result())).toBe(hex(WORKED_STATE));
    expect(() => decoder.push(new Uint8Array(1))).toThrow(/already finished/);
  });

  test("the golden bytes decode to the state, all at once and one byte at a time", () => {
    const stream = fromHex(WORKED_XXH3.map(([b]) => b).join(""));
    expect(hex(decodeSnapshot(stream))).toBe(hex(WORKED_STATE));
    const decoder = createDecoder();
    for (let i = 0; i < stream.length; i++) decoder.push(stream.subarray(i, i + 1));
    decoder.end();
    expect(hex(decoder.result())).toBe(hex(WORKED_STATE));
    const summary = decoder.summary();
    expect(summary.header).toMatchObject({ major: 1, minor: 0, pageSize: 64, totalSize: 200, maxRecordPayload: 64, deviceId: "", length: 67 });
    expect(summary.header!.checksumValue).toBe(XXH3_HEADER);
    expect(summary.records).toEqual({ pages: 2, lz4: 0, zero: 1, delta: 0, config: 0, round: 0, skipped: 0, end: 1 });
    expect(summary.pages).toEqual({ raw: 2, lz4: 0, zero: 2, delta: 0 });
    expect(summary.bytes).toBe(291);
    expect(summary.ended).toBe(true);
    expect(decoder.config).toBeUndefined();
  });

  test("encoder summary of the worked example", () => {
    const { summary } = encodeSnapshotWithSummary(WORKED_STATE, WORKED_OPTIONS);
    expect(summary).toEqual({
      records: 4,
      bytes: 291,
      pages: { raw: 2, lz4: 0, zero: 2, delta: 0, clean: 0 },
      compressed: { records: 0, bytes: 0, stateBytes: 0 },
      rounds: 0,
      config: false,
      stateBytes: 200,
      checksum: "xxh3",
    });
  });
});

describe("CRC32C golden stream", () => {
  test("encodeSnapshot with checksum crc32c writes exactly the pinned bytes", () => {
    expectFields(encodeSnapshot(WORKED_STATE, { ...WORKED_OPTIONS, checksum: "crc32c" }), WORKED_CRC32C);
  });

  test("the pinned checksums are what the references compute", () => {
    const stream = fromHex(WORKED_CRC32C.map(([b]) => b).join(""));
    expect(xxh3(stream.subarray(0, 59))).toBe(XXH3_HEADER_CRC);
    const { records } = splitStream(stream);
    const expected = [CRC_REC0, CRC_REC1, CRC_REC2, CRC_END];
    records.forEach((r, i) => {
      expect(crc32cReference(r.bytes.subarray(0, r.bytes.length - 8)), `record ${i}`).toBe(expected[i]);
      expect(r.checksum).toBe(BigInt(expected[i]!));
    });
    const d3 = chain(chain(chain(XXH3_HEADER_CRC, BigInt(CRC_REC0)), BigInt(CRC_REC1)), BigInt(CRC_REC2));
    expect(d3).toBe(CRC_D3);
  });

  test("the golden bytes decode to the state", () => {
    const stream = fromHex(WORKED_CRC32C.map(([b]) => b).join(""));
    expect(hex(decodeSnapshot(stream))).toBe(hex(WORKED_STATE));
  });
});

// ---------------------------------------------------------------------------------------------
// An incremental stream: 264 bytes (four full pages and an 8-byte one) against a base. Pages 0
// and 1 change a few bytes (one DELTA record of two pages), page 2 is unchanged (not sent),
// page 3 becomes all zero (ZERO), page 4 is rewritten (PAGES: a delta would not be smaller).
// The device config "cfg!" follows the pages.

const INC_BASE = (() => {
  const base = new Uint8Array(264);
  for (let i = 0; i < 128; i++) base[i] = i + 1;
  base.fill(0x30, 128, 192);
  base.fill(0x55, 192, 256);
  for (let i = 256; i < 264; i++) base[i] = 0xa0 + (i - 256);
  return base;
})();
const INC_STATE = (() => {
  const next = INC_BASE.slice();
  next[10] = 0xee;
  next[11] = 0xef;
  next[40] = 0x99;
  next[70] = 0x11;
  next[71] = 0x22;
  next.fill(0, 192, 256);
  for (let i = 256; i < 264; i++) next[i] = 0xb0 + (i - 256);
  return next;
})();
const INC_CONFIG = new TextEncoder().encode("cfg!");
const INC_OPTIONS = { regions: [{ name: "s", size: 264 }], pageSize: 64, maxRecordPayload: 64, base: INC_BASE, config: INC_CONFIG } as const;
const XXH3_INC_BASE = 0x279ada6617297b2an;

const INCREMENTAL: Field[] = [
  ["89 4D 49 47 0D 0A 1A 0A", "magic"],
  ["01 00", "major 1"],
  ["00 00", "minor 0"],
  ["43 00 00 00", "header length 67"],
  ["01 00 00 00", "flags: INCREMENTAL"],
  ["01", "XXH3-64"],
  ["06", "page shift 6"],
  ["01 00", "1 region"],
  ["08 01 00 00 00 00 00 00", "total state size 264"],
  ["40 00 00 00", "maximum record payload 64"],
  ["00 00", "no device id"],
  ["00 00", "reserved"],
  ["2A 7B 29 17 66 DA 9A 27", "base identity: XXH3-64 of the base"],
  ["01 00 73", 'region 0: name "s"'],
  ["08 01 00 00 00 00 00 00", "region 0: size 264"],
  ["31 35 41 F7 52 6E D8 F8", "header checksum"],
  // record 0 @67: DELTA of pages 0-1
  ["03 00 00 00", "record 0: DELTA, flags 0, region 0"],
  ["13 00 00 00", "record 0: payload length 19 = (4 + 7) + (4 + 4)"],
  ["00 00 00 00", "record 0: sequence 0"],
  ["02 00 00 00", "record 0: 2 pages"],
  ["00 00 00 00 00 00 00 00", "record 0: offset 0"],
  ["07 00 00 00", "page 0: XBZRLE of 7 bytes"],
  ["0A 02 EE EF", "page 0: zrun 10, nzrun 2 (bytes 10-11 = ee ef)"],
  ["1C 01 99", "page 0: zrun 28, nzrun 1 (byte 40 = 99); the unchanged rest is omitted"],
  ["04 00 00 00", "page 1: XBZRLE of 4 bytes"],
  ["06 02 11 22", "page 1: zrun 6, nzrun 2 (bytes 70-71 = 11 22)"],
  ["F1 A0 10 96 E7 6D 87 59", "record 0: checksum"],
  // page 2 is clean: nothing is sent for it
  // record 1 @118: ZERO page 3
  ["02 00 00 00", "record 1: ZERO, flags 0, region 0"],
  ["00 00 00 00", "record 1: payload length 0"],
  ["01 00 00 00", "record 1: sequence 1"],
  ["01 00 00 00", "record 1: 1 page"],
  ["C0 00 00 00 00 00 00 00", "record 1: offset 192"],
  ["51 26 CA D4 C1 E2 F8 97", "record 1: checksum"],
  // record 2 @150: PAGES page 4 (8 bytes)
  ["01 00 00 00", "record 2: PAGES, flags 0, region 0"],
  ["08 00 00 00", "record 2: payload length 8"],
  ["02 00 00 00", "record 2: sequence 2"],
  ["01 00 00 00", "record 2: 1 page"],
  ["00 01 00 00 00 00 00 00", "record 2: offset 256"],
  ["B0 B1 B2 B3 B4 B5 B6 B7", "record 2: the page's 8 bytes"],
  ["4B 1C 9F 5F 19 CA 08 C8", "record 2: checksum"],
  // record 3 @190: CONFIG
  ["10 00 00 00", "record 3: CONFIG, flags 0, region 0"],
  ["04 00 00 00", "record 3: payload length 4"],
  ["03 00 00 00", "record 3: sequence 3"],
  ["00 00 00 00", "record 3: page count 0"],
  ["00 00 00 00 00 00 00 00", "record 3: offset 0"],
  ["63 66 67 21", 'record 3: "cfg!"'],
  ["01 BB EC 84 C0 68 77 AD", "record 3: checksum"],
  // record 4 @226: END
  ["12 00 00 00", "END, flags 0, region 0"],
  ["18 00 00 00", "END: payload length 24"],
  ["04 00 00 00", "END: sequence 4"],
  ["00 00 00 00", "END: page count 0"],
  ["00 00 00 00 00 00 00 00", "END: offset 0"],
  ["04 00 00 00 00 00 00 00", "END: record count 4"],
  ["E2 00 00 00 00 00 00 00", "END: byte count 226"],
  ["05 6D AD 4A 88 B7 BA C0", "END: digest D4"],
  ["7D 50 3C 90 34 C1 BF 42", "END: checksum"],
];

describe("incremental golden stream (DELTA, clean page, ZERO, PAGES, CONFIG)", () => {
  test("encodeSnapshot with a base writes exactly the pinned bytes", () => {
    const { stream, summary } = encodeSnapshotWithSummary(INC_STATE, INC_OPTIONS);
    expectFields(stream, INCREMENTAL);
    expect(summary).toEqual({
      records: 5,
      bytes: 282,
      pages: { raw: 1, lz4: 0, zero: 1, delta: 2, clean: 1 },
      compressed: { records: 0, bytes: 0, stateBytes: 0 },
      rounds: 0,
      config: true,
      stateBytes: 264,
      checksum: "xxh3",
    });
  });

  test("the pinned values are what the references compute", () => {
    expect(xxh3(INC_BASE)).toBe(XXH3_INC_BASE);
    expect(hex(xbzrleEncodeReference(INC_BASE.subarray(0, 64), INC_STATE.subarray(0, 64))!)).toBe("0a02eeef1c0199");
    expect(hex(xbzrleEncodeReference(INC_BASE.subarray(64, 128), INC_STATE.subarray(64, 128))!)).toBe("06021122");
    const b = new StreamBuilder({ regions: [{ name: "s", size: 264 }], pageSize: 64, maxRecordPayload: 64, base: XXH3_INC_BASE });
    b.delta(0, 0, [fromHex("0a02eeef1c0199"), fromHex("06021122")])
      .zero(0, 192, 1)
      .pages(0, 256, INC_STATE.subarray(256))
      .config(INC_CONFIG)
      .end();
    expect(hex(b.bytes())).toBe(hex(fromHex(INCREMENTAL.map(([x]) => x).join(""))));
  });

  test("the golden bytes decode onto the base, carrying the config", () => {
    const stream = fromHex(INCREMENTAL.map(([x]) => x).join(""));
    const base = INC_BASE.slice();
    const decoder = createDecoder({ base, requireConfig: true });
    decoder.push(stream, true);
    expect(hex(decoder.result())).toBe(hex(INC_STATE));
    expect(hex(base)).toBe(hex(INC_BASE)); // the base is read, never written
    expect(hex(decoder.config!)).toBe(hex(INC_CONFIG));
    expect(decoder.header!.baseDigest).toBe(XXH3_INC_BASE);
    const summary = decoder.summary();
    expect(summary.records).toEqual({ pages: 1, lz4: 0, zero: 1, delta: 1, config: 1, round: 0, skipped: 0, end: 1 });
    expect(summary.pages).toEqual({ raw: 1, lz4: 0, zero: 1, delta: 2 });
  });
});

describe("round markers", () => {
  test("ROUND records count pages and stream bytes per FORMAT.md 3.5 (round 0 from the end of the header)", () => {
    // Two rounds: the whole state, then a dirty page sent again against the shadow.
    const state = WORKED_STATE.slice();
    const shadow = new Uint8Array(200);
    const chunks: Uint8Array[] = [];
    const encoder = createEncoder({ ...WORKED_OPTIONS, ondata: (c) => chunks.push(c) });
    encoder.writePages(0, 0, state, { shadow, updateShadow: true, skipClean: false, delta: false });
    const r0 = encoder.endRound(64);
    state[3] = 0x77;
    encoder.writePages(0, 0, state.subarray(0, 64), { shadow: shadow.subarray(0, 64), updateShadow: true });
    const r1 = encoder.endRound(0);
    encoder.end();
    const stream = concat(...chunks);

    const b = new StreamBuilder({ regions: [{ name: "s", size: 200 }], pageSize: 64, maxRecordPayload: 64 });
    b.pages(0, 0, WORKED_STATE.subarray(0, 64)).zero(0, 64, 2).pages(0, 192, WORKED_STATE.subarray(192));
    b.round(0, 4, 64);
    b.delta(0, 0, [xbzrleEncodeReference(WORKED_STATE.subarray(0, 64), state.subarray(0, 64))!]);
    b.round(1, 1, 0);
    b.end();
    expect(hex(stream)).toBe(hex(b.bytes()));
    // round 0: records 0-2 (96 + 32 + 40) and its own 64 bytes; round 1: one delta record and its marker
    expect(r0).toEqual({ round: 0, pages: 4, bytes: 96 + 32 + 40 + 64, dirtyBytes: 64 });
    expect(r1).toEqual({ round: 1, pages: 1, bytes: 32 + 4 + 3 + 64, dirtyBytes: 0 });

    const decoder = createDecoder();
    decoder.push(stream, true);
    expect(hex(decoder.result())).toBe(hex(state));
    expect(decoder.rounds).toEqual([r0, r1]);
  });
});
