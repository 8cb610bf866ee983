// An independent writer of migstream streams, straight from docs/FORMAT.md, for golden and
// rejection tests. It shares no code with the codec: constants are spelled out here, checksums
// and the digest chain use the pure-TS references (src/core/reference/), and every field can be
// overridden so that tests can build exactly the damaged stream they need.
import { crc32cReference } from "../../src/core/reference/crc32c.js";
import { lz4DecompressReference } from "../../src/core/reference/lz4.js";
import { xbzrleDecodeReference } from "../../src/core/reference/xbzrle.js";
import { xxh3Reference } from "../../src/core/reference/xxh3.js";
import { concatBytes } from "../../src/core/bytes.js";

export const MAGIC_BYTES = [0x89, 0x4d, 0x49, 0x47, 0x0d, 0x0a, 0x1a, 0x0a] as const;

/** Record tags of FORMAT.md 3.5. */
export const Tag = { PAGES: 0x01, ZERO: 0x02, DELTA: 0x03, LZ4: 0x04, CONFIG: 0x10, ROUND: 0x11, END: 0x12 } as const;
export const OPTIONAL = 0x01;

/** Fixed part of a 1.x header (FORMAT.md 2) and of a record (3.1). */
export const HEADER_FIXED = 48;
export const RECORD_HEADER = 24;
export const RECORD_OVERHEAD = 32;

export type Alg = "xxh3" | "crc32c";

const utf8 = new TextEncoder();

export function concat(...parts: readonly Uint8Array[]): Uint8Array {
  return concatBytes(parts);
}

export function le16(v: number): Uint8Array {
  const b = new Uint8Array(2);
  new DataView(b.buffer).setUint16(0, v, true);
  return b;
}

export function le32(v: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v, true);
  return b;
}

export function le64(v: bigint | number): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(v), true);
  return b;
}

export function hex(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString("hex");
}

export function fromHex(text: string): Uint8Array {
  return Uint8Array.from(Buffer.from(text.replace(/[^0-9a-fA-F]/g, ""), "hex"));
}

/** XXH3-64 with seed 0 (the reference). */
export function xxh3(data: Uint8Array): bigint {
  return xxh3Reference(data, 0n);
}

/** A record checksum (3.2): XXH3-64, or CRC32C zero-extended to 64 bits. */
export function recordChecksum(bytes: Uint8Array, alg: Alg): bigint {
  return alg === "crc32c" ? BigInt(crc32cReference(bytes)) : xxh3Reference(bytes, 0n);
}

/** One step of the stream digest (3.3): XXH3-64(le64(D) ‖ le64(checksum)). */
export function chain(digest: bigint, checksum: bigint): bigint {
  return xxh3(concat(le64(digest), le64(checksum)));
}

// ---------------------------------------------------------------------------------------------
// Header

export interface RegionDef {
  name: string;
  size: number;
}

export interface HeaderSpec {
  regions: readonly RegionDef[];
  pageSize?: number;
  maxRecordPayload?: number;
  checksum?: Alg;
  deviceId?: string;
  /** Makes the stream incremental against a base of this XXH3-64. */
  base?: bigint;
  // Raw overrides, for damaged or foreign headers.
  magic?: ArrayLike<number>;
  major?: number;
  minor?: number;
  /** Header length field (default: the real length). */
  length?: number;
  flags?: number;
  alg?: number;
  pageShift?: number;
  regionCount?: number;
  totalSize?: bigint;
  deviceIdLength?: number;
  reserved?: number;
  baseField?: bigint;
  /** Replaces the encoded region table. */
  table?: Uint8Array;
  /** Bytes appended after the region table, before the checksum. */
  extra?: Uint8Array;
  /** Header checksum (default: the right one). */
  headerChecksum?: bigint;
}

export function regionTable(regions: readonly RegionDef[]): Uint8Array {
  return concat(
    ...regions.map((r) => {
      const name = utf8.encode(r.name);
      return concat(le16(name.length), name, le64(r.size));
    }),
  );
}

/** A header per FORMAT.md 2, checksummed with the reference XXH3 unless overridden. */
export function buildHeader(spec: HeaderSpec): { bytes: Uint8Array; checksum: bigint } {
  const pageSize = spec.pageSize ?? 64;
  const deviceId = utf8.encode(spec.deviceId ?? "");
  const table = spec.table ?? regionTable(spec.regions);
  const extra = spec.extra ?? new Uint8Array(0);
  const length = HEADER_FIXED + deviceId.length + table.length + extra.length + 8;
  const fixed = new Uint8Array(HEADER_FIXED);
  const v = new DataView(fixed.buffer);
  fixed.set(spec.magic ?? MAGIC_BYTES, 0);
  v.setUint16(8, spec.major ?? 1, true);
  v.setUint16(10, spec.minor ?? 0, true);
  v.setUint32(12, spec.length ?? length, true);
  v.setUint32(16, spec.flags ?? (spec.base === undefined ? 0 : 1), true);
  v.setUint8(20, spec.alg ?? (spec.checksum === "crc32c" ? 2 : 1));
  v.setUint8(21, spec.pageShift ?? Math.log2(pageSize));
  v.setUint16(22, spec.regionCount ?? spec.regions.length, true);
  v.setBigUint64(24, spec.totalSize ?? BigInt(spec.regions.reduce((n, r) => n + r.size, 0)), true);
  v.setUint32(32, spec.maxRecordPayload ?? pageSize, true);
  v.setUint16(36, spec.deviceIdLength ?? deviceId.length, true);
  v.setUint16(38, spec.reserved ?? 0, true);
  v.setBigUint64(40, spec.baseField ?? spec.base ?? 0n, true);
  const body = concat(fixed, deviceId, table, extra);
  const checksum = spec.headerChecksum ?? xxh3(body);
  return { bytes: concat(body, le64(checksum)), checksum };
}

// ---------------------------------------------------------------------------------------------
// Records

export interface RecordSpec {
  tag: number;
  flags?: number;
  region?: number;
  /** Payload length field (default: the payload's length). */
  length?: number;
  seq: number;
  pages?: number;
  offset?: number | bigint;
  payload?: Uint8Array;
  /** Checksum field (default: the right one). */
  checksum?: bigint;
}

/** A record per FORMAT.md 3.1. */
export function buildRecord(spec: RecordSpec, alg: Alg): Uint8Array {
  const payload = spec.payload ?? new Uint8Array(0);
  const head = new Uint8Array(RECORD_HEADER);
  const v = new DataView(head.buffer);
  v.setUint8(0, spec.tag);
  v.setUint8(1, spec.flags ?? 0);
  v.setUint16(2, spec.region ?? 0, true);
  v.setUint32(4, spec.length ?? payload.length, true);
  v.setUint32(8, spec.seq, true);
  v.setUint32(12, spec.pages ?? 0, true);
  v.setBigUint64(16, BigInt(spec.offset ?? 0), true);
  const body = concat(head, payload);
  return concat(body, le64(spec.checksum ?? recordChecksum(body, alg)));
}

/** The checksum field of a whole record (its last 8 bytes). */
export function checksumOf(record: Uint8Array): bigint {
  return new DataView(record.buffer, record.byteOffset + record.length - 8, 8).getBigUint64(0, true);
}

/** A DELTA payload: for each page, u32 n then n bytes of XBZRLE. */
export function deltaPayload(entries: readonly Uint8Array[]): Uint8Array {
  return concat(...entries.flatMap((e) => [le32(e.length), e]));
}

export interface EndFields {
  records?: bigint | number;
  bytes?: bigint | number;
  digest?: bigint;
}

/** Builds a stream record by record; sequence numbers, ROUND byte counts and END by default. */
export class StreamBuilder {
  readonly header: Uint8Array;
  readonly headerChecksum: bigint;
  readonly alg: Alg;
  readonly pageSize: number;
  readonly records: Uint8Array[] = [];
  #roundStart: number;

  constructor(spec: HeaderSpec) {
    const { bytes, checksum } = buildHeader(spec);
    this.header = bytes;
    this.headerChecksum = checksum;
    this.alg = spec.checksum ?? "xxh3";
    this.pageSize = spec.pageSize ?? 64;
    this.#roundStart = bytes.length;
  }

  /** Stream offset of record `i` (or of the end of the stream so far). */
  offsetOf(i: number = this.records.length): number {
    return this.header.length + this.records.slice(0, i).reduce((n, r) => n + r.length, 0);
  }

  /** D after the first `count` records (3.3). */
  digest(count: number = this.records.length): bigint {
    let d = this.headerChecksum;
    for (const r of this.records.slice(0, count)) d = chain(d, checksumOf(r));
    return d;
  }

  record(spec: Omit<RecordSpec, "seq"> & { seq?: number }): this {
    this.records.push(buildRecord({ ...spec, seq: spec.seq ?? this.records.length }, this.alg));
    return this;
  }

  pages(region: number, offset: number, data: Uint8Array, pages = Math.max(1, Math.ceil(data.length / this.pageSize))): this {
    return this.record({ tag: Tag.PAGES, region, offset, pages, payload: data });
  }

  zero(region: number, offset: number | bigint, pages: number): this {
    return this.record({ tag: Tag.ZERO, region, offset, pages });
  }

  delta(region: number, offset: number, entries: readonly Uint8Array[]): this {
    return this.record({ tag: Tag.DELTA, region, offset, pages: entries.length, payload: deltaPayload(entries) });
  }

  config(blob: Uint8Array): this {
    return this.record({ tag: Tag.CONFIG, payload: blob });
  }

  /** A ROUND record; `bytes` defaults to the spec's count (end of previous ROUND/header to its end). */
  round(round: number, pages: number, dirtyBytes = 0, bytes?: number, reserved = 0): this {
    const size = RECORD_OVERHEAD + 32;
    const count = bytes ?? this.offsetOf() + size - this.#roundStart;
    this.record({ tag: Tag.ROUND, payload: concat(le32(round), le32(reserved), le64(pages), le64(count), le64(dirtyBytes)) });
    this.#roundStart = this.offsetOf();
    return this;
  }

  /** The END record (3.5), right unless fields are overridden. */
  end(fields: EndFields = {}, extra: Partial<RecordSpec> = {}): this {
    const payload = concat(le64(fields.records ?? this.records.length), le64(fields.bytes ?? this.offsetOf()), le64(fields.digest ?? this.digest()));
    return this.record({ tag: Tag.END, payload, ...extra });
  }

  bytes(): Uint8Array {
    return concat(this.header, ...this.records);
  }
}

// ---------------------------------------------------------------------------------------------
// Taking streams apart and putting them back together

export interface RecordView {
  tag: number;
  flags: number;
  region: number;
  length: number;
  seq: number;
  pages: number;
  offset: bigint;
  payload: Uint8Array;
  checksum: bigint;
  /** Stream offset of the record. */
  at: number;
  bytes: Uint8Array;
}

export function readRecord(bytes: Uint8Array, at = 0): RecordView {
  const v = new DataView(bytes.buffer, bytes.byteOffset + at);
  const length = v.getUint32(4, true);
  return {
    tag: v.getUint8(0),
    flags: v.getUint8(1),
    region: v.getUint16(2, true),
    length,
    seq: v.getUint32(8, true),
    pages: v.getUint32(12, true),
    offset: v.getBigUint64(16, true),
    payload: bytes.subarray(at + RECORD_HEADER, at + RECORD_HEADER + length),
    checksum: v.getBigUint64(RECORD_HEADER + length, true),
    at,
    bytes: bytes.subarray(at, at + RECORD_OVERHEAD + length),
  };
}

/** Splits a well-formed stream into its header and its records (END included). */
export function splitStream(stream: Uint8Array): { header: Uint8Array; records: RecordView[] } {
  const headerLength = new DataView(stream.buffer, stream.byteOffset).getUint32(12, true);
  const records: RecordView[] = [];
  let at = headerLength;
  while (at < stream.length) {
    const r = readRecord(stream, at);
    records.push(r);
    at += r.bytes.length;
  }
  return { header: stream.subarray(0, headerLength), records };
}

/**
 * Reassembles a stream from a header and records, renumbering the records and recomputing their
 * checksums; the END record (if `end` is not false) is rebuilt to match, except for the fields in
 * `end` (e.g. an old digest).
 */
export function reframe(header: Uint8Array, records: readonly Uint8Array[], alg: Alg, end: EndFields | false = {}): Uint8Array {
  const headerChecksum = new DataView(header.buffer, header.byteOffset + header.length - 8).getBigUint64(0, true);
  const out: Uint8Array[] = [];
  let digest = headerChecksum;
  let bytes = header.length;
  for (const original of records) {
    const r = readRecord(original);
    if (r.tag === Tag.END && end !== false) continue;
    const rebuilt = buildRecord({ tag: r.tag, flags: r.flags, region: r.region, seq: out.length, pages: r.pages, offset: r.offset, payload: r.payload }, alg);
    out.push(rebuilt);
    digest = chain(digest, checksumOf(rebuilt));
    bytes += rebuilt.length;
  }
  if (end !== false) {
    const payload = concat(le64(end.records ?? out.length), le64(end.bytes ?? bytes), le64(end.digest ?? digest));
    out.push(buildRecord({ tag: Tag.END, seq: out.length, payload }, alg));
  }
  return concat(header, ...out);
}

// ---------------------------------------------------------------------------------------------
// A reference reader: FORMAT.md read literally, with the pure-TS checksums and XBZRLE. It is the
// oracle the property tests hold the codec's output against; it throws a plain Error naming the
// rule a stream breaks (it is not meant to report positions like the codec does).

export interface ReferenceResult {
  state: Uint8Array;
  pageSize: number;
  alg: Alg;
  deviceId: string;
  regions: RegionDef[];
  base: bigint | undefined;
  maxRecordPayload: number;
  headerLength: number;
  records: RecordView[];
  config: Uint8Array | undefined;
  rounds: { round: number; pages: number; bytes: number; dirtyBytes: number }[];
  /** Pages delivered per kind, and records per kind. */
  pages: { raw: number; lz4: number; zero: number; delta: number };
  counts: { pages: number; lz4: number; zero: number; delta: number; config: number; round: number; skipped: number; end: number };
}

export function referenceDecode(stream: Uint8Array, base?: Uint8Array): ReferenceResult {
  const fail = (rule: string): never => {
    throw new Error(`reference reader: ${rule}`);
  };
  const dv = new DataView(stream.buffer, stream.byteOffset, stream.length);
  if (stream.length < 16) fail("truncated header");
  for (let i = 0; i < 8; i++) if (stream[i] !== MAGIC_BYTES[i]) fail("magic");
  const length = dv.getUint32(12, true);
  if (length < 56) fail("header length");
  if (stream.length < length) fail("truncated header");
  const headerChecksum = dv.getBigUint64(length - 8, true);
  if (xxh3(stream.subarray(0, length - 8)) !== headerChecksum) fail("header checksum");
  const minor = dv.getUint16(10, true);
  if (dv.getUint16(8, true) !== 1 || minor > 1) fail("version");
  const flags = dv.getUint32(16, true);
  // 1.1 adds flag bit 1: the stream may carry LZ4 records.
  if ((flags & ~(minor >= 1 ? 3 : 1)) !== 0) fail("header flags");
  const lz4 = (flags & 2) !== 0;
  const algByte = dv.getUint8(20);
  if (algByte !== 1 && algByte !== 2) fail("algorithm");
  const alg: Alg = algByte === 2 ? "crc32c" : "xxh3";
  const shift = dv.getUint8(21);
  if (shift < 6 || shift > 20) fail("page shift");
  const pageSize = 2 ** shift;
  const regionCount = dv.getUint16(22, true);
  if (regionCount < 1 || regionCount > 1024) fail("region count");
  const total = Number(dv.getBigUint64(24, true));
  const maxRecordPayload = dv.getUint32(32, true);
  if (maxRecordPayload < pageSize) fail("maximum record payload");
  const idLength = dv.getUint16(36, true);
  if (idLength > 1024) fail("device id length");
  if (dv.getUint16(38, true) !== 0) fail("reserved");
  const incremental = (flags & 1) !== 0;
  const baseField = dv.getBigUint64(40, true);
  if (!incremental && baseField !== 0n) fail("base identity on a full stream");
  const text = new TextDecoder("utf-8", { fatal: true });
  let at = 48;
  const deviceId = text.decode(stream.subarray(at, at + idLength));
  at += idLength;
  const regions: RegionDef[] = [];
  for (let i = 0; i < regionCount; i++) {
    const n = dv.getUint16(at, true);
    if (n < 1 || n > 255) fail("name length");
    const name = text.decode(stream.subarray(at + 2, at + 2 + n));
    if (regions.some((r) => r.name === name)) fail("duplicate name");
    regions.push({ name, size: Number(dv.getBigUint64(at + 2 + n, true)) });
    at += 2 + n + 8;
  }
  if (at !== length - 8) fail("bytes left in the header");
  if (regions.reduce((s, r) => s + r.size, 0) !== total) fail("region sizes");
  if (incremental) {
    if (!base) fail("incremental stream without base");
    if (base!.length !== total || xxh3(base!) !== baseField) fail("wrong base");
  }

  const starts: number[] = [];
  regions.reduce((s, r) => (starts.push(s), s + r.size), 0);
  const state = incremental ? base!.slice() : new Uint8Array(total);
  const held = regions.map((r) => new Array<boolean>(Math.ceil(r.size / pageSize)).fill(incremental));
  const records: RecordView[] = [];
  const rounds: ReferenceResult["rounds"] = [];
  const pages = { raw: 0, lz4: 0, zero: 0, delta: 0 };
  const counts = { pages: 0, lz4: 0, zero: 0, delta: 0, config: 0, round: 0, skipped: 0, end: 0 };
  let config: Uint8Array | undefined;
  let digest = headerChecksum;
  let pos = length;
  for (;;) {
    if (stream.length - pos < 24) fail("no END record");
    const flagsByte = stream[pos + 1]!;
    if ((flagsByte & ~1) !== 0) fail("record flags");
    const p = dv.getUint32(pos + 4, true);
    if (p > maxRecordPayload) fail("payload above the maximum");
    if (stream.length - pos < 32 + p) fail("no END record");
    const r = readRecord(stream, pos);
    if (recordChecksum(stream.subarray(pos, pos + 24 + p), alg) !== r.checksum) fail("record checksum");
    if (r.seq !== records.length) fail("sequence");
    records.push(r);
    if (r.tag === Tag.PAGES || r.tag === Tag.ZERO || r.tag === Tag.DELTA || (r.tag === Tag.LZ4 && lz4)) {
      if (r.flags !== 0) fail("OPTIONAL on a page record");
      const region = regions[r.region] ?? fail("region index");
      if (r.pages < 1) fail("page count");
      if (r.offset % BigInt(pageSize) !== 0n) fail("alignment");
      const first = Number(r.offset / BigInt(pageSize));
      const regionPages = held[r.region]!.length;
      if (first >= regionPages || r.pages > regionPages - first) fail("bounds");
      const offset = first * pageSize;
      const covered = Math.min(r.pages * pageSize, region.size - offset);
      const dst = state.subarray(starts[r.region]! + offset, starts[r.region]! + offset + covered);
      if (r.tag === Tag.PAGES) {
        if (r.length !== covered) fail("PAGES length");
        dst.set(r.payload);
        pages.raw += r.pages;
        counts.pages++;
      } else if (r.tag === Tag.LZ4) {
        if (r.length < 5) fail("LZ4 payload");
        const declared = new DataView(r.payload.buffer, r.payload.byteOffset, 4).getUint32(0, true);
        if (declared !== covered || covered > maxRecordPayload) fail("LZ4 length");
        const decoded = lz4DecompressReference(r.payload.subarray(4), covered);
        if (!(decoded instanceof Uint8Array)) fail(`LZ4 block: ${decoded.problem}`);
        dst.set(decoded as Uint8Array);
        pages.lz4 += r.pages;
        counts.lz4++;
      } else if (r.tag === Tag.ZERO) {
        if (r.length !== 0) fail("ZERO payload");
        dst.fill(0);
        pages.zero += r.pages;
        counts.zero++;
      } else {
        let q = 0;
        const pv = new DataView(r.payload.buffer, r.payload.byteOffset, r.payload.length);
        for (let i = 0; i < r.pages; i++) {
          if (r.length - q < 4) fail("DELTA entries");
          const n = pv.getUint32(q, true);
          if (n > r.length - q - 4) fail("DELTA entries");
          if (!held[r.region]![first + i]) fail("DELTA for a page not held");
          const page = dst.subarray(i * pageSize, Math.min(covered, (i + 1) * pageSize));
          xbzrleDecodeStrict(r.payload.subarray(q + 4, q + 4 + n), page);
          q += 4 + n;
        }
        if (q !== r.length) fail("DELTA entries");
        pages.delta += r.pages;
        counts.delta++;
      }
      for (let i = 0; i < r.pages; i++) held[r.region]![first + i] = true;
    } else if (r.tag === Tag.CONFIG || r.tag === Tag.ROUND || r.tag === Tag.END) {
      if (r.flags !== 0 || r.region !== 0 || r.pages !== 0 || r.offset !== 0n) fail("fields of a non-page record");
      const pv = new DataView(r.payload.buffer, r.payload.byteOffset, r.payload.length);
      if (r.tag === Tag.CONFIG) {
        if (config) fail("second CONFIG");
        config = r.payload.slice();
        counts.config++;
      } else if (r.tag === Tag.ROUND) {
        if (r.length !== 32) fail("ROUND length");
        if (pv.getUint32(0, true) !== rounds.length || pv.getUint32(4, true) !== 0) fail("ROUND order");
        rounds.push({
          round: pv.getUint32(0, true),
          pages: Number(pv.getBigUint64(8, true)),
          bytes: Number(pv.getBigUint64(16, true)),
          dirtyBytes: Number(pv.getBigUint64(24, true)),
        });
        counts.round++;
      } else {
        if (r.length !== 24) fail("END length");
        if (pv.getBigUint64(0, true) !== BigInt(r.seq)) fail("END record count");
        if (pv.getBigUint64(8, true) !== BigInt(pos)) fail("END byte count");
        if (pv.getBigUint64(16, true) !== digest) fail("END digest");
        counts.end++;
        pos += r.bytes.length;
        break;
      }
    } else {
      if ((r.flags & 1) === 0) fail("unknown mandatory record");
      counts.skipped++;
    }
    digest = chain(digest, r.checksum);
    pos += r.bytes.length;
  }
  if (pos !== stream.length) fail("trailing bytes");
  if (!incremental && held.some((h) => h.includes(false))) fail("missing page");
  return {
    state,
    pageSize,
    alg,
    deviceId,
    regions,
    base: incremental ? baseField : undefined,
    maxRecordPayload,
    headerLength: length,
    records,
    config,
    rounds,
    pages,
    counts,
  };
}

/** XBZRLE decode per FORMAT.md 4 (the reference decoder, errors as plain failures). */
function xbzrleDecodeStrict(delta: Uint8Array, page: Uint8Array): void {
  try {
    xbzrleDecodeReference(delta, page);
  } catch (error) {
    throw new Error(`reference reader: XBZRLE (${(error as Error).message})`);
  }
}

/** XORs `mask` into byte `i` of `bytes` in place. */
export function flip(bytes: Uint8Array, i: number, mask = 0x01): Uint8Array {
  bytes[i] = bytes[i]! ^ mask;
  return bytes;
}
