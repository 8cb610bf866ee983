// One test per rejection path of docs/FORMAT.md: the error's code, record index and byte
// offset, and that nothing reached the caller (no result, the target never committed, the base
// untouched, no core memory leaked). Streams are written by the independent builder, so each one
// is valid except for the one flaw under test.
import { beforeAll, describe, expect, test } from "vitest";
import { MigrationError, type MigrationErrorCode } from "../../src/core/errors.js";
import { CoreBuffer } from "../../src/core/buffer.js";
import { core } from "../../src/core/instance.js";
import { type DecodeTarget, type DecoderOptions, StreamDecoder } from "../../src/codec/decoder.js";
import { MemoryTarget } from "../../src/codec/memory-target.js";
import { stagingPool } from "../../src/codec/staging-pool.js";
import { createDecoder, decodeSnapshot, encodeSnapshot } from "../../src/codec/snapshot.js";
import { xbzrleEncodeReference } from "../../src/core/reference/xbzrle.js";
import { xxh3Reference } from "../../src/core/reference/xxh3.js";
import { encodeHeader } from "../../src/format/header.js";
import {
  concat,
  flip,
  type HeaderSpec,
  hex,
  le16,
  le32,
  le64,
  OPTIONAL,
  reframe,
  regionTable,
  splitStream,
  StreamBuilder,
  Tag,
  xxh3,
} from "./stream-builder.js";

// ---------------------------------------------------------------------------------------------
// The reference stream: regions "a" (200 bytes: pages 0-2 and an 8-byte page 3) and "b" (128
// bytes: pages 0-1), page size 64, records of up to 128 bytes. Header: 48 + 2 * 11 + 8 = 78.

const REGIONS = [
  { name: "a", size: 200 },
  { name: "b", size: 128 },
] as const;
const HEADER: HeaderSpec = { regions: REGIONS, pageSize: 64, maxRecordPayload: 128 };
const HEADER_LENGTH = 78;

const STATE = (() => {
  const s = new Uint8Array(328);
  for (let i = 0; i < 128; i++) s[i] = (i * 7 + 3) & 0xff || 1; // a: pages 0-1
  // a: pages 2-3 zero
  for (let i = 200; i < 328; i++) s[i] = (i * 13 + 5) & 0xff; // b
  return s;
})();
/** Page 0 of "a" after the delta of record 4. */
const A0_NEW = (() => {
  const p = STATE.slice(0, 64);
  p[5] = 0xab;
  p[6] = 0xcd;
  return p;
})();
const A0_DELTA = xbzrleEncodeReference(STATE.subarray(0, 64), A0_NEW)!;
const FINAL = (() => {
  const s = STATE.slice();
  s.set(A0_NEW, 0);
  return s;
})();
const CONFIG = Uint8Array.of(0xc0, 0xf1, 0x60);

type Step = (b: StreamBuilder) => void;

/** Records 0-5 of the reference stream; tests replace or drop some, then add END. */
function steps(): Step[] {
  return [
    (b) => b.pages(0, 0, STATE.subarray(0, 128)), // 0: PAGES a, pages 0-1
    (b) => b.zero(0, 128, 2), // 1: ZERO a, pages 2-3
    (b) => b.config(CONFIG), // 2: CONFIG
    (b) => b.round(0, 4, 0), // 3: ROUND 0
    (b) => b.delta(0, 0, [A0_DELTA]), // 4: DELTA a, page 0
    (b) => b.pages(1, 0, STATE.subarray(200, 328)), // 5: PAGES b, pages 0-1
  ];
}

function build(list: Step[] = steps(), header: HeaderSpec = HEADER, end = true): StreamBuilder {
  const b = new StreamBuilder(header);
  for (const step of list) step(b);
  if (end) b.end();
  return b;
}

/** `list` with step `i` replaced. */
function replaced(i: number, step: Step): Step[] {
  const list = steps();
  list[i] = step;
  return list;
}

interface Expected {
  code: MigrationErrorCode;
  recordIndex: number;
  byteOffset: number;
  message?: RegExp;
}

function errorOf(fn: () => unknown): MigrationError {
  let result: unknown;
  try {
    result = fn();
  } catch (error) {
    expect(error).toBeInstanceOf(MigrationError);
    return error as MigrationError;
  }
  throw new Error(`expected a MigrationError, got a result: ${String(result)}`);
}

function fields(e: MigrationError): Omit<Expected, "message"> {
  return { code: e.code, recordIndex: e.recordIndex!, byteOffset: e.byteOffset! };
}

/** A target that records what the decoder did to it (staging in memory, like decodeSnapshot). */
function spyTarget(): { target: DecodeTarget; calls: string[] } {
  const memory = new MemoryTarget();
  const calls: string[] = [];
  const target: DecodeTarget = {
    open: (h) => (calls.push("open"), memory.open(h)),
    commit: () => (calls.push("commit"), memory.commit()),
    abort: () => (calls.push("abort"), memory.abort()),
  };
  return { target, calls };
}

/**
 * Decodes `stream` every way there is (one shot, into a spy target, pushed in 7-byte chunks)
 * and checks that each fails the same way with nothing delivered and nothing leaked.
 */
function rejects(stream: Uint8Array, want: Expected, options: DecoderOptions = {}): MigrationError {
  const c = core();
  const before = c.allocatedBytes;
  const base = options.base?.slice();
  const { message, ...where } = want;

  const oneShot = errorOf(() => decodeSnapshot(stream, options));
  expect(fields(oneShot)).toEqual(where);
  if (message) expect(oneShot.message).toMatch(message);

  const spy = spyTarget();
  const decoder = new StreamDecoder(spy.target, options);
  const viaTarget = errorOf(() => decoder.push(stream, true));
  expect(fields(viaTarget)).toEqual(where);
  expect(spy.calls).not.toContain("commit");
  if (spy.calls.includes("open")) expect(spy.calls).toEqual(["open", "abort"]);
  expect(decoder.done).toBe(false);
  // A failed decoder stays failed with the same error.
  expect(errorOf(() => decoder.push(new Uint8Array(1)))).toBe(viaTarget);
  expect(errorOf(() => decoder.end())).toBe(viaTarget);

  const chunked = createDecoder(options);
  const viaChunks = errorOf(() => {
    for (let at = 0; at < stream.length; at += 7) chunked.push(stream.subarray(at, at + 7));
    chunked.end();
  });
  expect(fields(viaChunks)).toEqual(where);
  expect(errorOf(() => chunked.result()).code).toBe("EINVAL");

  if (options.base) expect(hex(options.base)).toBe(hex(base!));
  expect(c.allocatedBytes).toBe(before);
  return oneShot;
}

function decodes(stream: Uint8Array, options: DecoderOptions = {}): Uint8Array {
  const decoder = createDecoder(options);
  decoder.push(stream, true);
  return decoder.result();
}

beforeAll(() => {
  // Warm the core (scratch blocks, first allocations) so leak checks compare like with like.
  decodeSnapshot(build().bytes());
  decodeSnapshot(encodeSnapshot(STATE, { regions: REGIONS, pageSize: 64, base: STATE }), { base: STATE });
});

describe("the reference stream", () => {
  test("is valid: it decodes to the expected state with its config and round", () => {
    const b = build();
    expect(b.header.length).toBe(HEADER_LENGTH);
    const decoder = createDecoder({ regions: REGIONS, deviceId: "", requireConfig: true });
    decoder.push(b.bytes(), true);
    expect(hex(decoder.result())).toBe(hex(FINAL));
    expect(hex(decoder.config!)).toBe(hex(CONFIG));
    expect(decoder.rounds).toEqual([{ round: 0, pages: 4, bytes: b.offsetOf(4) - HEADER_LENGTH, dirtyBytes: 0 }]);
  });
});

// ---------------------------------------------------------------------------------------------

describe("header: reading order of FORMAT.md 2", () => {
  test("bad magic: corrupt at byte 0", () => {
    const stream = build(steps(), { ...HEADER, magic: [0x89, 0x4d, 0x49, 0x47, 0x0d, 0x0a, 0x1a, 0x00] }).bytes();
    rejects(stream, { code: "EBADMSG", recordIndex: 0, byteOffset: 0, message: /magic/ });
    // Text-mode mangling (CRLF -> LF) breaks the magic.
    const mangled = concat(Uint8Array.of(0x89, 0x4d, 0x49, 0x47, 0x0a, 0x1a, 0x0a), build().bytes().subarray(8));
    rejects(mangled, { code: "EBADMSG", recordIndex: 0, byteOffset: 0 });
    // Refused as soon as a received byte of the magic is wrong, not reported incomplete.
    rejects(new TextEncoder().encode("GET / HTTP/1.1"), { code: "EBADMSG", recordIndex: 0, byteOffset: 0, message: /magic/ });
    rejects(Uint8Array.of(0x89, 0x4d, 0x49, 0x46), { code: "EBADMSG", recordIndex: 0, byteOffset: 0, message: /magic \(not a migstream stream\)/ });
    // A TLS ClientHello (a sender with TLS, a reader without) is named as such.
    rejects(Uint8Array.of(0x16, 0x03, 0x01, 0x00, 0x80), { code: "EBADMSG", recordIndex: 0, byteOffset: 0, message: /starts like a TLS handshake/ });
    const decoder = createDecoder();
    decoder.push(Uint8Array.of(0x89, 0x4d));
    expect(fields(errorOf(() => decoder.push(Uint8Array.of(0x00))))).toEqual({ code: "EBADMSG", recordIndex: 0, byteOffset: 0 });
    // A right beginning is only incomplete.
    rejects(Uint8Array.of(0x89, 0x4d, 0x49, 0x47), { code: "ENODATA", recordIndex: 0, byteOffset: 4 });
  });

  test("header length below 56: corrupt at byte 12", () => {
    const stream = build(steps(), { ...HEADER, length: 55 }).bytes();
    rejects(stream, { code: "EBADMSG", recordIndex: 0, byteOffset: 12 });
  });

  test("header larger than the reader's maximum: E2BIG at byte 12, before the header is read", () => {
    const big = build(steps(), { ...HEADER, length: 64 * 1024 + 1 }).bytes();
    rejects(big, { code: "E2BIG", recordIndex: 0, byteOffset: 12 });
    // The limit is an option; the 16-byte prefix alone is enough to refuse.
    const stream = build().bytes();
    rejects(stream, { code: "E2BIG", recordIndex: 0, byteOffset: 12 }, { maxHeaderSize: HEADER_LENGTH - 1 });
    const decoder = createDecoder({ maxHeaderSize: HEADER_LENGTH - 1 });
    expect(fields(errorOf(() => decoder.push(stream.subarray(0, 16))))).toEqual({ code: "E2BIG", recordIndex: 0, byteOffset: 12 });
    expect(decodes(stream, { maxHeaderSize: HEADER_LENGTH })).toHaveLength(328);
  });

  test("header checksum mismatch: corrupt at the checksum field", () => {
    const stream = build().bytes();
    flip(stream, HEADER_LENGTH - 8 - 1); // region "b"'s size
    rejects(stream, { code: "EBADMSG", recordIndex: 0, byteOffset: HEADER_LENGTH - 8, message: /checksum/ });
  });

  test("a damaged version field reads as corrupt, not incompatible (checksum before version)", () => {
    const stream = build().bytes();
    stream[8] = 2;
    rejects(stream, { code: "EBADMSG", recordIndex: 0, byteOffset: HEADER_LENGTH - 8 });
  });

  test("another major version: incompatible at byte 8", () => {
    rejects(build(steps(), { ...HEADER, major: 2 }).bytes(), { code: "EPROTONOSUPPORT", recordIndex: 0, byteOffset: 8 });
    rejects(build(steps(), { ...HEADER, major: 0 }).bytes(), { code: "EPROTONOSUPPORT", recordIndex: 0, byteOffset: 8 });
  });

  test("a 2.x header with another layout after byte 16 is still told apart as incompatible (envelope rule)", () => {
    // Bytes 0-15 as in every version, then anything, then the XXH3-64 of it all.
    const prefix = concat(Uint8Array.of(0x89, 0x4d, 0x49, 0x47, 0x0d, 0x0a, 0x1a, 0x0a), le16(2), le16(7), le32(16 + 45 + 8));
    const body = concat(
      prefix,
      Uint8Array.from({ length: 45 }, (_, i) => (i * 37) & 0xff),
    );
    const stream = concat(body, le64(xxh3(body)), Uint8Array.of(1, 2, 3));
    rejects(stream, { code: "EPROTONOSUPPORT", recordIndex: 0, byteOffset: 8 });
  });

  test("a newer minor version: incompatible at byte 8, even with fields this reader does not know", () => {
    rejects(build(steps(), { ...HEADER, minor: 2 }).bytes(), { code: "EPROTONOSUPPORT", recordIndex: 0, byteOffset: 8 });
    // A 1.2 header flag: the version is checked before the fields.
    rejects(build(steps(), { ...HEADER, minor: 2, flags: 0x4 }).bytes(), { code: "EPROTONOSUPPORT", recordIndex: 0, byteOffset: 8 });
  });

  test("1.1: the LZ4 flag is known, other new bits are not; 1.0 does not know the LZ4 flag", () => {
    rejects(build(steps(), { ...HEADER, minor: 1, flags: 0x4 }).bytes(), { code: "EBADMSG", recordIndex: 0, byteOffset: 16 });
    rejects(build(steps(), { ...HEADER, minor: 0, flags: 0x2 }).bytes(), { code: "EBADMSG", recordIndex: 0, byteOffset: 16 });
  });

  test.each([
    ["unknown header flag", { flags: 0x2 }, 16],
    ["unknown checksum algorithm 0", { alg: 0 }, 20],
    ["unknown checksum algorithm 3", { alg: 3 }, 20],
    ["page shift 5", { pageShift: 5 }, 21],
    ["page shift 21", { pageShift: 21, maxRecordPayload: 1 << 21 }, 21],
    ["region count 0", { regionCount: 0 }, 22],
    ["region count 1025", { regionCount: 1025 }, 22],
    ["maximum record payload below the page size", { maxRecordPayload: 63 }, 32],
    ["reserved field not zero", { reserved: 1 }, 38],
    ["base identity on a full stream", { baseField: 5n }, 40],
    ["device id overrunning the header", { deviceIdLength: 40 }, 36],
    ["region sizes short of the total", { totalSize: 329n }, 24],
    ["region sizes beyond the total", { totalSize: 327n }, 48 + 11 + 2 + 1],
    ["bytes left over after the region table", { extra: Uint8Array.of(0) }, 48 + 22],
    ["region table overrunning the header", { regionCount: 3 }, 48 + 22],
    [
      "duplicate region name",
      {
        table: regionTable([
          { name: "a", size: 200 },
          { name: "a", size: 128 },
        ]),
      },
      48 + 11 + 2,
    ],
    ["empty region name", { table: concat(le16(0), le64(200), le16(1), Uint8Array.of(0x62), le64(128)) }, 48],
    ["invalid UTF-8 in a region name", { table: concat(le16(1), Uint8Array.of(0xff), le64(200), le16(1), Uint8Array.of(0x62), le64(128)) }, 50],
    ["invalid UTF-8 in the device id", { deviceId: "", deviceIdLength: 1, table: concat(Uint8Array.of(0xc3), regionTable(REGIONS)) }, 48],
  ] satisfies [string, Partial<HeaderSpec>, number][])("corrupt header field: %s (byte %i)", (_, override, byteOffset) => {
    const stream = build(steps(), { ...HEADER, ...override }).bytes();
    rejects(stream, { code: "EBADMSG", recordIndex: 0, byteOffset });
  });

  test("state above the reader's maximum state size: E2BIG at byte 24", () => {
    rejects(build().bytes(), { code: "E2BIG", recordIndex: 0, byteOffset: 24 }, { maxStateSize: 327 });
    expect(decodes(build().bytes(), { maxStateSize: 328 })).toHaveLength(328);
    // The default limit is 1 GiB; nothing is allocated for the declared size before the check.
    const huge = build([], { regions: [{ name: "x", size: 2 ** 30 + 1 }], pageSize: 64, maxRecordPayload: 64 }).bytes();
    rejects(huge, { code: "E2BIG", recordIndex: 0, byteOffset: 24 });
  });

  test("maximum record payload above the reader's limit: E2BIG at byte 32", () => {
    rejects(build().bytes(), { code: "E2BIG", recordIndex: 0, byteOffset: 32 }, { maxRecordPayload: 127 });
    const big = build([], { ...HEADER, maxRecordPayload: 16 * 1024 * 1024 + 1 }).bytes();
    rejects(big, { code: "E2BIG", recordIndex: 0, byteOffset: 32 });
  });
});

describe("header: the reader's expectations (FORMAT.md 2, step 6)", () => {
  test("wrong device id: ENODEV at the device id", () => {
    const stream = build(steps(), { ...HEADER, deviceId: "vfio-pci/8086:10fb" }).bytes();
    rejects(stream, { code: "ENODEV", recordIndex: 0, byteOffset: 48 }, { deviceId: "vfio-pci/8086:1521" });
    rejects(stream, { code: "ENODEV", recordIndex: 0, byteOffset: 48 }, { deviceId: "" });
    rejects(build().bytes(), { code: "ENODEV", recordIndex: 0, byteOffset: 48 }, { deviceId: "x" });
    expect(decodes(stream, { deviceId: "vfio-pci/8086:10fb" })).toHaveLength(328);
    expect(decodes(stream)).toHaveLength(328); // no expectation, no check
  });

  test("region table mismatch: ENODEV at the region table", () => {
    const stream = build(steps(), { ...HEADER, deviceId: "dev" }).bytes();
    const at = { recordIndex: 0, byteOffset: 48 + 3 };
    rejects(
      stream,
      { code: "ENODEV", ...at },
      {
        regions: [
          { name: "a", size: 200 },
          { name: "b", size: 129 },
        ],
      },
    );
    rejects(
      stream,
      { code: "ENODEV", ...at },
      {
        regions: [
          { name: "a", size: 200 },
          { name: "c", size: 128 },
        ],
      },
    );
    rejects(
      stream,
      { code: "ENODEV", ...at },
      {
        regions: [
          { name: "b", size: 128 },
          { name: "a", size: 200 },
        ],
      },
    );
    rejects(stream, { code: "ENODEV", ...at }, { regions: [{ name: "a", size: 328 }] });
    expect(decodes(stream, { regions: REGIONS })).toHaveLength(328);
  });

  test("the device id is checked before the base", () => {
    const b = new StreamBuilder({ ...HEADER, deviceId: "d", base: xxh3(STATE) });
    b.end();
    rejects(b.bytes(), { code: "ENODEV", recordIndex: 0, byteOffset: 48 }, { deviceId: "e" });
  });

  test("incremental stream without a base: ESTALE at the base identity", () => {
    const stream = encodeSnapshot(FINAL, { regions: REGIONS, pageSize: 64, base: STATE });
    rejects(stream, { code: "ESTALE", recordIndex: 0, byteOffset: 40 });
    expect(hex(decodes(stream, { base: STATE }))).toBe(hex(FINAL));
  });

  test("incremental stream onto another base: ESTALE at the base identity", () => {
    const stream = encodeSnapshot(FINAL, { regions: REGIONS, pageSize: 64, base: STATE });
    const other = STATE.slice();
    flip(other, 300);
    rejects(stream, { code: "ESTALE", recordIndex: 0, byteOffset: 40 }, { base: other });
    rejects(stream, { code: "ESTALE", recordIndex: 0, byteOffset: 40 }, { base: STATE.subarray(0, 327) });
    rejects(stream, { code: "ESTALE", recordIndex: 0, byteOffset: 40 }, { base: FINAL });
  });

  test("a reader that requires a config fails a stream without one, after its END", () => {
    const b = build(steps().filter((_, i) => i !== 2));
    const stream = b.bytes();
    rejects(stream, { code: "EBADMSG", recordIndex: b.records.length, byteOffset: stream.length, message: /config/ }, { requireConfig: true });
    expect(decodes(stream)).toHaveLength(328);
  });
});

// ---------------------------------------------------------------------------------------------

describe("records: framing and verification (FORMAT.md 3.4)", () => {
  test("reserved record flag bits: corrupt at the record", () => {
    for (const flags of [0x02, 0x80, 0x03]) {
      const b = build(replaced(1, (x) => x.record({ tag: Tag.ZERO, flags, offset: 128, pages: 2 })));
      rejects(b.bytes(), { code: "EBADMSG", recordIndex: 1, byteOffset: b.offsetOf(1), message: /flags/ });
    }
  });

  test("OPTIONAL on a kind of FORMAT.md 3.5: corrupt", () => {
    const kinds: Step[] = [
      (x) => x.record({ tag: Tag.PAGES, flags: OPTIONAL, pages: 2, payload: STATE.subarray(0, 128) }),
      (x) => x.record({ tag: Tag.ZERO, flags: OPTIONAL, offset: 128, pages: 2 }),
      (x) => x.record({ tag: Tag.CONFIG, flags: OPTIONAL, payload: CONFIG }),
      (x) => x.record({ tag: Tag.ROUND, flags: OPTIONAL, payload: new Uint8Array(32) }),
      (x) => x.record({ tag: Tag.END, flags: OPTIONAL, payload: concat(le64(0), le64(HEADER_LENGTH), le64(x.digest())) }),
      (x) => x.record({ tag: Tag.DELTA, flags: OPTIONAL, pages: 1, payload: concat(le32(0)) }),
    ];
    for (const kind of kinds) {
      const b = build([kind, ...steps()]);
      rejects(b.bytes(), { code: "EBADMSG", recordIndex: 0, byteOffset: HEADER_LENGTH });
    }
  });

  test("record payload above the header's maximum: E2BIG, refused before the payload is buffered", () => {
    const b = build(replaced(2, (x) => x.config(new Uint8Array(129))));
    const at = b.offsetOf(2);
    rejects(b.bytes(), { code: "E2BIG", recordIndex: 2, byteOffset: at });
    // Only the record's 24-byte head is needed to refuse it.
    const decoder = createDecoder();
    decoder.push(b.bytes().subarray(0, at));
    expect(fields(errorOf(() => decoder.push(b.bytes().subarray(at, at + 24))))).toEqual({ code: "E2BIG", recordIndex: 2, byteOffset: at });
    // A length field of 4 GiB - 1 with no payload at all.
    const huge = build(
      replaced(0, (x) => x.record({ tag: Tag.PAGES, length: 0xffffffff, pages: 2 })),
      HEADER,
      false,
    );
    rejects(huge.bytes(), { code: "E2BIG", recordIndex: 0, byteOffset: HEADER_LENGTH });
    // The limit is the header's, not the reader's (which is larger here).
    rejects(b.bytes(), { code: "E2BIG", recordIndex: 2, byteOffset: at }, { maxRecordPayload: 1 << 20 });
  });

  test("flags are checked before the payload length", () => {
    const b = build(
      replaced(0, (x) => x.record({ tag: Tag.PAGES, flags: 0x40, length: 0xffffffff })),
      HEADER,
      false,
    );
    rejects(b.bytes(), { code: "EBADMSG", recordIndex: 0, byteOffset: HEADER_LENGTH });
  });

  test("record checksum mismatch: corrupt at the record", () => {
    const b = build();
    for (const i of [0, 1, 2, 3, 4, 5, 6]) {
      for (const where of ["payload-or-head", "checksum"] as const) {
        const stream = b.bytes();
        const at = b.offsetOf(i);
        const length = b.records[i]!.length;
        flip(stream, where === "checksum" ? at + length - 3 : at + Math.min(30, length - 9), 0x10);
        rejects(stream, { code: "EBADMSG", recordIndex: i, byteOffset: at, message: /checksum/ });
      }
    }
  });

  test("record checksum with CRC32C: corrupt at the record", () => {
    const b = build(steps(), { ...HEADER, checksum: "crc32c" });
    expect(hex(decodes(b.bytes()))).toBe(hex(FINAL));
    const stream = b.bytes();
    flip(stream, b.offsetOf(5) + 40);
    rejects(stream, { code: "EBADMSG", recordIndex: 5, byteOffset: b.offsetOf(5), message: /checksum/ });
    // An XXH3 checksum on a CRC32C stream (the upper 32 bits must be zero).
    const mixed = new StreamBuilder({ ...HEADER, checksum: "crc32c" });
    steps().forEach((s) => s(mixed));
    const wrong = new StreamBuilder(HEADER);
    steps().forEach((s) => s(wrong));
    mixed.records[3] = wrong.records[3]!;
    rejects(concat(mixed.header, ...mixed.records), { code: "EBADMSG", recordIndex: 3, byteOffset: mixed.offsetOf(3) });
  });

  test("a sequence gap (a record missing): corrupt where the missing record should be", () => {
    const b = build();
    const stream = concat(b.header, ...b.records.filter((_, i) => i !== 2));
    rejects(stream, { code: "EBADMSG", recordIndex: 2, byteOffset: b.offsetOf(2), message: /sequence/ });
  });

  test("a duplicated record: corrupt at the copy", () => {
    const b = build();
    const r = b.records;
    const stream = concat(b.header, r[0]!, r[1]!, r[1]!, r[2]!, r[3]!, r[4]!, r[5]!, r[6]!);
    rejects(stream, { code: "EBADMSG", recordIndex: 2, byteOffset: b.offsetOf(2), message: /sequence/ });
    // An END repeated after the END is trailing bytes.
    const twice = concat(b.bytes(), r[6]!);
    rejects(twice, { code: "EBADMSG", recordIndex: 7, byteOffset: b.offsetOf(7), message: /trailing/ });
  });

  test("reordered records: corrupt at the first one out of place", () => {
    const b = build();
    const r = b.records;
    rejects(concat(b.header, r[1]!, r[0]!, ...r.slice(2)), { code: "EBADMSG", recordIndex: 0, byteOffset: HEADER_LENGTH });
    const swapped = concat(b.header, r[0]!, r[1]!, r[2]!, r[4]!, r[3]!, r[5]!, r[6]!);
    rejects(swapped, { code: "EBADMSG", recordIndex: 3, byteOffset: b.offsetOf(3), message: /sequence/ });
  });

  test("the checksum is verified before the sequence number", () => {
    const b = build(replaced(1, (x) => x.record({ tag: Tag.ZERO, seq: 9, offset: 128, pages: 2, checksum: 1n })));
    rejects(b.bytes(), { code: "EBADMSG", recordIndex: 1, byteOffset: b.offsetOf(1), message: /checksum/ });
  });
});

describe("records: page records (FORMAT.md 3.5)", () => {
  const at = (b: StreamBuilder, i: number) => ({ recordIndex: i, byteOffset: b.offsetOf(i) });

  test("offset not page-aligned: corrupt", () => {
    for (const offset of [1, 32, 63, 65]) {
      const b = build(replaced(1, (x) => x.record({ tag: Tag.ZERO, offset, pages: 1 })));
      rejects(b.bytes(), { code: "EBADMSG", ...at(b, 1), message: /aligned|outside/ });
    }
  });

  test("pages outside their region: corrupt", () => {
    const cases: Step[] = [
      (x) => x.zero(0, 256, 1), // region a has pages 0-3 (offsets 0-192)
      (x) => x.zero(0, 128, 3), // pages 2-4
      (x) => x.zero(1, 128, 1), // region b has pages 0-1
      (x) => x.pages(1, 64, STATE.subarray(0, 128), 2), // pages 1-2 of b
      (x) => x.zero(0, 2n ** 63n, 1),
      (x) => x.zero(0, 64, 0xffffffff), // page count overflow
    ];
    for (const c of cases) {
      const b = build(replaced(1, c));
      rejects(b.bytes(), { code: "EBADMSG", ...at(b, 1) });
    }
  });

  test("page count 0: corrupt", () => {
    const b = build(replaced(1, (x) => x.zero(0, 128, 0)));
    rejects(b.bytes(), { code: "EBADMSG", ...at(b, 1) });
  });

  test("region index out of range: corrupt", () => {
    for (const region of [2, 0xffff]) {
      const b = build(replaced(5, (x) => x.pages(region, 0, STATE.subarray(200, 328))));
      rejects(b.bytes(), { code: "EBADMSG", ...at(b, 5), message: /region/ });
    }
  });

  test("PAGES payload length not the covered length: corrupt", () => {
    const cases: Step[] = [
      (x) => x.pages(0, 0, STATE.subarray(0, 127), 2),
      (x) => x.pages(0, 0, STATE.subarray(0, 128), 1),
      (x) => x.pages(0, 0, STATE.subarray(0, 64), 2),
      (x) => x.pages(0, 0, new Uint8Array(0), 1),
    ];
    for (const c of cases) {
      const b = build(replaced(0, c));
      rejects(b.bytes(), { code: "EBADMSG", recordIndex: 0, byteOffset: HEADER_LENGTH, message: /length/ });
    }
    // The last page of "a" covers 8 bytes: 64 is wrong, 8 is right.
    const partial = (n: number): Step[] =>
      replaced(1, (x) => {
        x.zero(0, 128, 1);
        x.pages(0, 192, new Uint8Array(n).fill(1), 1);
      });
    const wrong = build(partial(64));
    rejects(wrong.bytes(), { code: "EBADMSG", ...at(wrong, 2) });
    expect(decodes(build(partial(8)).bytes()).subarray(192, 200)).toEqual(new Uint8Array(8).fill(1));
  });

  test("ZERO with a payload: corrupt", () => {
    const b = build(replaced(1, (x) => x.record({ tag: Tag.ZERO, offset: 128, pages: 2, payload: Uint8Array.of(0) })));
    rejects(b.bytes(), { code: "EBADMSG", ...at(b, 1), message: /length/ });
  });

  test("DELTA entries not filling the payload exactly: corrupt", () => {
    const payloads = [
      concat(le32(A0_DELTA.length), A0_DELTA, Uint8Array.of(0)), // a byte left over
      concat(le32(A0_DELTA.length + 1), A0_DELTA), // n runs past the payload
      concat(le32(A0_DELTA.length), A0_DELTA.subarray(0, A0_DELTA.length)).subarray(0, 3), // no room for n
      concat(le32(0), le32(0)), // two entries for one page
      new Uint8Array(0), // no entry
    ];
    for (const payload of payloads) {
      const b = build(replaced(4, (x) => x.record({ tag: Tag.DELTA, pages: 1, payload })));
      rejects(b.bytes(), { code: "EBADMSG", ...at(b, 4), message: /length/ });
    }
    // Two pages, the second entry missing.
    const b = build(replaced(4, (x) => x.record({ tag: Tag.DELTA, pages: 2, payload: concat(le32(0)) })));
    rejects(b.bytes(), { code: "EBADMSG", ...at(b, 4) });
  });

  test("DELTA for a page the full stream never delivered: corrupt", () => {
    // Page 0 of "b" is delivered only by record 5; a delta for it first has nothing to apply to.
    const list = steps();
    list[4] = (x) => x.delta(1, 0, [Uint8Array.of(0, 1, 0x42)]);
    const b = build(list);
    rejects(b.bytes(), { code: "EBADMSG", ...at(b, 4), message: /hold/ });
    // Two pages of which only the first is held.
    const c = build(replaced(4, (x) => x.delta(0, 64, [new Uint8Array(0), new Uint8Array(0)])));
    expect(decodes(c.bytes())).toHaveLength(328); // pages 1-2 of "a" are held
    const d = build(
      replaced(1, (x) => {
        x.zero(0, 128, 1);
        x.delta(0, 128, [new Uint8Array(0), Uint8Array.of(0, 1, 9)]); // page 3 not held yet
        x.zero(0, 192, 1);
      }),
    );
    rejects(d.bytes(), { code: "EBADMSG", ...at(d, 2) });
    // In an incremental stream the base holds every page.
    const inc = new StreamBuilder({ ...HEADER, base: xxh3(STATE) });
    inc.delta(1, 0, [Uint8Array.of(0, 1, 0x42)]).end();
    const expected = STATE.slice();
    expected[200] = 0x42;
    expect(hex(decodes(inc.bytes(), { base: STATE }))).toBe(hex(expected));
  });

  test("malformed XBZRLE inside a DELTA whose checksum is valid: corrupt", () => {
    const deltas = [
      Uint8Array.of(0x00, 0x00), // empty nzrun
      Uint8Array.of(0x02, 0x01, 0x55, 0x00, 0x01, 0x66), // empty zrun after the first pair
      Uint8Array.of(0x3f, 0x02, 0x01, 0x02), // nzrun ends past the page (63 + 2 > 64)
      Uint8Array.of(0x41, 0x01, 0x01), // zrun past the page
      Uint8Array.of(0x01, 0x05, 0x01, 0x02), // nzrun data cut short
      Uint8Array.of(0x01), // a lone length
      Uint8Array.of(0x81, 0x80, 0x01, 0x00), // 3-byte length
      Uint8Array.of(0x00, 0xc1, 0x00), // nzrun of 65 bytes on a 64-byte page
    ];
    for (const delta of deltas) {
      const b = build(replaced(4, (x) => x.delta(0, 0, [delta])));
      rejects(b.bytes(), { code: "EBADMSG", ...at(b, 4), message: /XBZRLE/ });
    }
    // The partial last page is 8 bytes: a run past it is malformed even though a page is 64.
    const tail = build(replaced(4, (x) => x.delta(0, 192, [Uint8Array.of(0x07, 0x02, 0x01, 0x02)])));
    rejects(tail.bytes(), { code: "EBADMSG", ...at(tail, 4), message: /XBZRLE/ });
  });
});

describe("records: other kinds (FORMAT.md 3.5)", () => {
  const at = (b: StreamBuilder, i: number) => ({ recordIndex: i, byteOffset: b.offsetOf(i) });

  test("unknown mandatory tag: corrupt", () => {
    for (const tag of [0x00, 0x04, 0x13, 0x7f, 0xff]) {
      const b = build(replaced(3, (x) => x.record({ tag, payload: Uint8Array.of(1, 2, 3) })));
      rejects(b.bytes(), { code: "EBADMSG", ...at(b, 3), message: /unknown/ });
    }
  });

  test("an unknown OPTIONAL record is verified, counted, chained into the digest and skipped", () => {
    const list = steps();
    list.splice(3, 0, (x) => x.record({ tag: 0x40, flags: OPTIONAL, region: 9, pages: 3, offset: 5, payload: Uint8Array.of(9, 9, 9) }));
    list.push((x) => x.record({ tag: 0xfe, flags: OPTIONAL }));
    const b = build(list);
    const decoder = createDecoder();
    decoder.push(b.bytes(), true);
    expect(hex(decoder.result())).toBe(hex(FINAL));
    expect(decoder.summary().records.skipped).toBe(2);
    // Its checksum is verified...
    const damaged = b.bytes();
    flip(damaged, b.offsetOf(3) + 25);
    rejects(damaged, { code: "EBADMSG", ...at(b, 3), message: /checksum/ });
    // ... it takes a sequence number, and it is part of the digest: an END that leaves it out
    // of the chain is refused.
    const records = b.records.slice(0, -1);
    const digestWithout = build(steps()).digest();
    const stream = reframe(b.header, records, "xxh3", { digest: digestWithout });
    rejects(stream, { code: "EBADMSG", recordIndex: 8, byteOffset: b.offsetOf(8), message: /digest/ });
    // Dropping it (and fixing everything else) is caught by the digest too.
    const dropped = reframe(
      b.header,
      b.records.filter((_, i) => i !== 3 && i !== 8),
      "xxh3",
      { digest: b.digest(8) },
    );
    const kept = splitStream(dropped).records;
    rejects(dropped, { code: "EBADMSG", recordIndex: kept.length - 1, byteOffset: kept.at(-1)!.at });
  });

  test("duplicate CONFIG: corrupt at the second", () => {
    const list = steps();
    list.splice(4, 0, (x) => x.config(CONFIG));
    const b = build(list);
    rejects(b.bytes(), { code: "EBADMSG", ...at(b, 4), message: /config/ });
  });

  test("CONFIG, ROUND and END with region, offset or page count set: corrupt", () => {
    for (const extra of [{ region: 1 }, { offset: 64 }, { pages: 1 }]) {
      const c = build(replaced(2, (x) => x.record({ tag: Tag.CONFIG, payload: CONFIG, ...extra })));
      rejects(c.bytes(), { code: "EBADMSG", ...at(c, 2) });
      const e = build(steps(), HEADER, false);
      e.end({}, extra);
      rejects(e.bytes(), { code: "EBADMSG", ...at(e, 6) });
    }
  });

  test("ROUND out of order: corrupt", () => {
    const skipped = build(replaced(3, (x) => x.round(1, 4, 0)));
    rejects(skipped.bytes(), { code: "EBADMSG", ...at(skipped, 3), message: /round/ });
    const list = steps();
    list.splice(4, 0, (x) => x.round(0, 0, 0));
    const repeated = build(list);
    rejects(repeated.bytes(), { code: "EBADMSG", ...at(repeated, 4), message: /round/ });
    const ok = steps();
    ok.splice(4, 0, (x) => x.round(1, 0, 0));
    expect(decodes(build(ok).bytes())).toHaveLength(328);
  });

  test("ROUND with a reserved field set or a wrong payload length: corrupt", () => {
    const reserved = build(replaced(3, (x) => x.round(0, 4, 0, undefined, 1)));
    rejects(reserved.bytes(), { code: "EBADMSG", ...at(reserved, 3) });
    const short = build(replaced(3, (x) => x.record({ tag: Tag.ROUND, payload: new Uint8Array(31) })));
    rejects(short.bytes(), { code: "EBADMSG", ...at(short, 3), message: /length/ });
  });
});

describe("end of stream (FORMAT.md 3.4, 3.5, 3.6)", () => {
  test("missing END (truncated at a record boundary): ENODATA naming the next record and the end of the data", () => {
    const b = build();
    for (const i of [0, 1, 3, 6]) {
      const stream = b.bytes().subarray(0, b.offsetOf(i));
      rejects(stream, { code: "ENODATA", recordIndex: i, byteOffset: b.offsetOf(i), message: /incomplete/ });
    }
    // Nothing but a header.
    rejects(b.header, { code: "ENODATA", recordIndex: 0, byteOffset: HEADER_LENGTH });
    rejects(new Uint8Array(0), { code: "ENODATA", recordIndex: 0, byteOffset: 0 });
  });

  test("cut inside a record: ENODATA at the end of the data, the message says where the record began", () => {
    const b = build();
    const start = b.offsetOf(2);
    const cut = start + 30;
    rejects(b.bytes().subarray(0, cut), {
      code: "ENODATA",
      recordIndex: 2,
      byteOffset: cut,
      message: new RegExp(`ends at byte ${cut}, inside record 2 \\(which began at byte ${start}\\)`),
    });
  });

  test("wrong END record count: corrupt at END", () => {
    for (const records of [5, 7, 0, 2n ** 32n + 6n]) {
      const b = build(steps(), HEADER, false);
      b.end({ records });
      rejects(b.bytes(), { code: "EBADMSG", recordIndex: 6, byteOffset: b.offsetOf(6), message: /count/ });
    }
  });

  test("wrong END byte count: corrupt at END", () => {
    for (const delta of [-1, 1, -HEADER_LENGTH]) {
      const b = build(steps(), HEADER, false);
      b.end({ bytes: b.offsetOf() + delta });
      rejects(b.bytes(), { code: "EBADMSG", recordIndex: 6, byteOffset: b.offsetOf(6), message: /byte count/ });
    }
  });

  test("wrong END digest: corrupt at END", () => {
    const b = build(steps(), HEADER, false);
    b.end({ digest: b.digest() ^ 1n });
    rejects(b.bytes(), { code: "EBADMSG", recordIndex: 6, byteOffset: b.offsetOf(6), message: /digest/ });
    // A record dropped and everything else made consistent (renumbered, checksummed, the END's
    // count and byte count recomputed): only the digest still knows.
    const original = build();
    const dropped = reframe(
      original.header,
      original.records.filter((_, i) => i !== 3),
      "xxh3",
      { digest: original.digest(6) },
    );
    rejects(dropped, { code: "EBADMSG", recordIndex: 5, byteOffset: original.offsetOf(6) - 64, message: /digest/ });
    // Two records swapped and renumbered.
    const r = original.records;
    const swapped = reframe(original.header, [r[0]!, r[2]!, r[1]!, ...r.slice(3)], "xxh3", { digest: original.digest(6) });
    rejects(swapped, { code: "EBADMSG", recordIndex: 6, byteOffset: original.offsetOf(6), message: /digest/ });
    // The digest starts from the header checksum: the same records behind another header.
    const other = build(steps(), { ...HEADER, deviceId: "x" });
    const moved = reframe(other.header, original.records, "xxh3", { digest: original.digest(6) });
    rejects(moved, { code: "EBADMSG", recordIndex: 6, byteOffset: other.offsetOf(6), message: /digest/ });
  });

  test("END with a wrong payload length: corrupt", () => {
    const b = build(steps(), HEADER, false);
    b.record({ tag: Tag.END, payload: concat(le64(6), le64(b.offsetOf()), le64(b.digest()), Uint8Array.of(0)) });
    rejects(b.bytes(), { code: "EBADMSG", recordIndex: 6, byteOffset: b.offsetOf(6), message: /length/ });
  });

  test("trailing bytes after END: corrupt at the first of them", () => {
    const b = build();
    const end = b.offsetOf();
    rejects(concat(b.bytes(), Uint8Array.of(0)), { code: "EBADMSG", recordIndex: 7, byteOffset: end, message: /trailing/ });
    rejects(concat(b.bytes(), b.header), { code: "EBADMSG", recordIndex: 7, byteOffset: end, message: /trailing/ });
    // In a later push, too: the decoder does not commit before it is told the stream ended.
    const decoder = createDecoder();
    decoder.push(b.bytes());
    expect(fields(errorOf(() => decoder.push(Uint8Array.of(1), true)))).toEqual({ code: "EBADMSG", recordIndex: 7, byteOffset: end });
  });

  test("a full stream missing a page: corrupt after END, naming the page", () => {
    const b = build(steps().filter((_, i) => i !== 5)); // region b never sent
    const stream = b.bytes();
    rejects(stream, { code: "EBADMSG", recordIndex: b.records.length, byteOffset: stream.length, message: /page 0 of region "b"/ });
    // Only the partial last page of "a" missing.
    const c = build(replaced(1, (x) => x.zero(0, 128, 1)));
    rejects(c.bytes(), { code: "EBADMSG", recordIndex: c.records.length, byteOffset: c.offsetOf(), message: /page 3 of region "a"/ });
    // An incremental stream need not send any page.
    const inc = new StreamBuilder({ ...HEADER, base: xxh3(STATE) });
    inc.end();
    expect(hex(decodes(inc.bytes(), { base: STATE }))).toBe(hex(STATE));
  });
});

describe("records reach a target only once verified (FORMAT.md 3.4 step 5)", () => {
  test("a target that applies records itself sees the verified ones before the fault, and is never committed", () => {
    const b = build();
    const stream = b.bytes();
    flip(stream, b.offsetOf(4) + 26); // record 4 (DELTA) fails its checksum
    const seen: string[] = [];
    const calls: string[] = [];
    const decoder = new StreamDecoder(
      {
        open: () => (calls.push("open"), undefined),
        apply: (r) => seen.push(`${r.tag}:${r.region}:${r.offset}:${r.pages}:${r.payload.length}`),
        commit: () => calls.push("commit"),
        abort: () => calls.push("abort"),
      },
      {},
    );
    expect(fields(errorOf(() => decoder.push(stream, true)))).toEqual({ code: "EBADMSG", recordIndex: 4, byteOffset: b.offsetOf(4) });
    expect(seen).toEqual([`${Tag.PAGES}:0:0:2:128`, `${Tag.ZERO}:0:128:2:0`]);
    expect(calls).toEqual(["open", "abort"]);
  });

  test("a DELTA with malformed XBZRLE never reaches a target that applies records itself", () => {
    for (const delta of [Uint8Array.of(0x00, 0x00), Uint8Array.of(0x3f, 0x02, 0x01, 0x02), Uint8Array.of(0x01)]) {
      const b = build(replaced(4, (x) => x.delta(0, 0, [delta])));
      const seen: number[] = [];
      const decoder = new StreamDecoder({ open: () => undefined, apply: (r) => seen.push(r.tag), commit: () => {}, abort: () => {} }, {});
      expect(fields(errorOf(() => decoder.push(b.bytes(), true)))).toEqual({ code: "EBADMSG", recordIndex: 4, byteOffset: b.offsetOf(4) });
      expect(seen).toEqual([Tag.PAGES, Tag.ZERO]);
    }
  });
});

describe("instance hygiene", () => {
  test("after every kind of failure the same process still round-trips", () => {
    const stream = encodeSnapshot(FINAL, { regions: REGIONS, pageSize: 64, config: CONFIG });
    expect(hex(decodeSnapshot(stream))).toBe(hex(FINAL));
    const decoder = createDecoder();
    decoder.push(stream.subarray(0, 100));
    decoder.abort();
    expect(errorOf(() => decoder.push(stream)).code).toBe("ECANCELED");
    expect(hex(decodeSnapshot(stream))).toBe(hex(FINAL));
  });
});

describe("decoder options", () => {
  test.each([
    ["maxStateSize", Infinity],
    ["maxRecordPayload", 1.5],
    ["maxHeaderSize", -1],
  ])("%s = %s is EINVAL", (name, value) => {
    expect(() => decodeSnapshot(new Uint8Array(0), { [name]: value })).toThrow(expect.objectContaining({ code: "EINVAL" }));
  });
});

describe("regions of 2^32 pages or more", () => {
  test("a header declaring one is corrupt, before any bitmap is allocated", () => {
    const c = core();
    const before = c.allocatedBytes;
    // A region of 2^38 bytes at 64-byte pages: 2^32 pages.
    const header = encodeHeader({
      checksum: "xxh3",
      pageSize: 64,
      maxRecordPayload: 64,
      deviceId: "",
      baseDigest: undefined,
      regions: [{ name: "s", size: 64 }],
    });
    const bytes = header.bytes.slice();
    const view = new DataView(bytes.buffer);
    view.setBigUint64(24, 1n << 38n, true); // total
    view.setBigUint64(48 + 2 + 1, 1n << 38n, true); // region size
    view.setBigUint64(bytes.length - 8, xxh3Reference(bytes.subarray(0, bytes.length - 8)), true);
    expect(() => decodeSnapshot(bytes, { maxStateSize: 2 ** 40 })).toThrow(expect.objectContaining({ code: "EBADMSG", byteOffset: 48 + 2 + 1 }));
    expect(c.allocatedBytes).toBe(before);
  });

  test("an encoder refuses to write one", () => {
    expect(() =>
      encodeHeader({ checksum: "xxh3", pageSize: 64, maxRecordPayload: 64, deviceId: "", baseDigest: undefined, regions: [{ name: "s", size: 2 ** 38 }] }),
    ).toThrow(expect.objectContaining({ code: "EINVAL" }));
  });
});

describe("memory exhausted part-way", () => {
  test("staging regions already allocated are freed when a later one cannot be", () => {
    const c = core();
    // Staging kept for reuse is given back when memory runs out: count without it.
    stagingPool.clear();
    const before = c.allocatedBytes;
    // Three regions of 1.5 GiB, a page written into each: the third's staging cannot fit in 4 GiB
    // of Wasm memory.
    const regions = [0, 1, 2].map((i) => ({ name: `r${i}`, size: 1.5 * 2 ** 30 }));
    const stream = new StreamBuilder({ regions, pageSize: 4096, maxRecordPayload: 4096 });
    for (const i of [0, 1, 2]) stream.pages(i, 0, new Uint8Array(4096).fill(i + 1));
    expect(() => decodeSnapshot(stream.bytes(), { maxStateSize: 2 ** 40 })).toThrow(expect.objectContaining({ code: "ENOMEM" }));
    expect(c.allocatedBytes).toBe(before);
  });

  test("a header's claim, and ZERO records over it, take no staging: ten 1 GiB claims at once fit", () => {
    const c = core();
    stagingPool.clear();
    const before = c.allocatedBytes;
    const regions = [{ name: "state", size: 2 ** 30 }];
    const stream = new StreamBuilder({ regions, pageSize: 4096, maxRecordPayload: 4096 }).zero(0, 0, 2 ** 18).bytes();
    const decoders = Array.from({ length: 10 }, () => {
      const decoder = createDecoder({ maxStateSize: 2 ** 30 });
      decoder.push(stream);
      return decoder;
    });
    // Window and bitmaps only: 32 KiB of bitmaps per 1 GiB claim, not the gigabyte.
    expect(c.allocatedBytes - before).toBeLessThan(10 * (1 << 20));
    for (const d of decoders) d.abort();
    expect(c.allocatedBytes).toBe(before);
  });

  test("staging made on the first write over reused memory keeps ZERO pages absorbed before it zero", () => {
    const pageSize = 4096;
    const regions = [{ name: "state", size: 8 * pageSize }];
    // A kept block of the same size, full of 0xee: the staging of the next decode.
    stagingPool.clear();
    const dirty = new CoreBuffer(8 * pageSize);
    dirty.bytes.fill(0xee);
    stagingPool.give(dirty);
    const page = new Uint8Array(pageSize).fill(7);
    const stream = new StreamBuilder({ regions, pageSize, maxRecordPayload: pageSize })
      .zero(0, 0, 4)
      .pages(0, 5 * pageSize, page)
      .zero(0, 4 * pageSize, 1)
      .zero(0, 6 * pageSize, 2)
      .end()
      .bytes();
    const state = decodeSnapshot(stream);
    const expected = new Uint8Array(8 * pageSize);
    expected.set(page, 5 * pageSize);
    expect(Buffer.from(state).equals(Buffer.from(expected))).toBe(true);
    expect(stagingPool.keptBytes).toBeGreaterThan(0);
  });
});
