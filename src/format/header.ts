// The stream header: layout, encoding and verified parsing (docs/FORMAT.md, "Header").
import { MigrationError } from "../core/errors.js";
import { xxh3 } from "../core/xxh3.js";
import {
  ALG_CRC32C,
  ALG_XXH3,
  type ChecksumAlgorithm,
  type Compression,
  FORMAT_MAJOR,
  FORMAT_MINOR,
  HEADER_CHECKSUM,
  HEADER_FIXED,
  HEADER_FLAG_INCREMENTAL,
  HEADER_FLAG_LZ4,
  headerFlagsKnown,
  HEADER_PREFIX,
  MAGIC,
  MAX_DEVICE_ID_BYTES,
  MAX_NAME_BYTES,
  MAX_PAGE_SHIFT,
  MAX_REGION_PAGES,
  MAX_REGIONS,
  MIN_PAGE_SHIFT,
} from "./constants.js";

/** A named, sized part of a device's state. */
export interface RegionSpec {
  readonly name: string;
  readonly size: number;
}

export interface StreamHeader {
  readonly major: number;
  readonly minor: number;
  readonly checksum: ChecksumAlgorithm;
  readonly pageSize: number;
  readonly totalSize: number;
  /** Largest record payload the writer uses; a reader refuses streams above its own limit. */
  readonly maxRecordPayload: number;
  readonly deviceId: string;
  /** XXH3-64 of the base state for incremental streams, else undefined. */
  readonly baseDigest: bigint | undefined;
  readonly regions: readonly RegionSpec[];
  /** Page compression the stream may use: "lz4" makes it a 1.1 stream, "none" keeps it 1.0. */
  readonly compression: Compression;
  /** Encoded length of the header, checksum included. */
  readonly length: number;
  /** The header checksum, which also seeds the stream digest. */
  readonly checksumValue: bigint;
}

export type HeaderFields = Omit<StreamHeader, "major" | "minor" | "length" | "checksumValue" | "totalSize" | "compression"> & {
  readonly compression?: Compression;
};

const utf8 = new TextEncoder();
// ignoreBOM keeps a leading U+FEFF as part of the name: "\u{feff}a" and "a" are different names.
const utf8Strict = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

// Header errors name record 0 (the decoder has read no record yet), like every stream error
// names a record index and a byte offset (FORMAT.md 5).
function corrupt(message: string, byteOffset: number): MigrationError {
  return new MigrationError("EBADMSG", `corrupt stream header: ${message}`, { recordIndex: 0, byteOffset });
}

/** Checks a region layout as both the encoder and a reader's expectations must satisfy. */
export function validateRegions(regions: readonly RegionSpec[]): void {
  if (regions.length < 1 || regions.length > MAX_REGIONS) {
    throw new MigrationError("EINVAL", `a state needs 1 to ${MAX_REGIONS} regions, got ${regions.length}`);
  }
  const seen = new Set<string>();
  for (const region of regions) {
    const bytes = utf8.encode(region.name).length;
    if (bytes < 1 || bytes > MAX_NAME_BYTES) {
      throw new MigrationError("EINVAL", `region name must be 1 to ${MAX_NAME_BYTES} bytes of UTF-8: ${JSON.stringify(region.name)}`);
    }
    if (seen.has(region.name)) throw new MigrationError("EINVAL", `duplicate region name ${JSON.stringify(region.name)}`);
    seen.add(region.name);
    if (!Number.isSafeInteger(region.size) || region.size < 0) {
      throw new MigrationError("EINVAL", `invalid size ${region.size} for region ${JSON.stringify(region.name)}`);
    }
  }
}

/** Serialises a header, computing its length and checksum. */
export function encodeHeader(fields: HeaderFields): { bytes: Uint8Array; header: StreamHeader } {
  validateRegions(fields.regions);
  const shift = Math.log2(fields.pageSize);
  if (!Number.isInteger(shift) || shift < MIN_PAGE_SHIFT || shift > MAX_PAGE_SHIFT) {
    throw new MigrationError("EINVAL", `page size must be a power of two from ${1 << MIN_PAGE_SHIFT} to ${1 << MAX_PAGE_SHIFT}, got ${fields.pageSize}`);
  }
  if (!Number.isInteger(fields.maxRecordPayload) || fields.maxRecordPayload < fields.pageSize || fields.maxRecordPayload > 0xffff_ffff - 64) {
    throw new MigrationError("EINVAL", `maximum record payload must be at least the page size (${fields.pageSize}), got ${fields.maxRecordPayload}`);
  }
  for (const region of fields.regions) {
    if (Math.ceil(region.size / fields.pageSize) > MAX_REGION_PAGES) {
      throw new MigrationError("EINVAL", `region ${JSON.stringify(region.name)} has more than 2^32-1 pages of ${fields.pageSize} bytes`);
    }
  }
  const deviceId = utf8.encode(fields.deviceId);
  if (deviceId.length > MAX_DEVICE_ID_BYTES) {
    throw new MigrationError("EINVAL", `device id is longer than ${MAX_DEVICE_ID_BYTES} bytes`);
  }
  const names = fields.regions.map((r) => utf8.encode(r.name));
  const length = HEADER_FIXED + deviceId.length + names.reduce((n, name) => n + 2 + name.length + 8, 0) + HEADER_CHECKSUM;
  const bytes = new Uint8Array(length);
  const view = new DataView(bytes.buffer);
  const totalSize = fields.regions.reduce((n, r) => n + r.size, 0);
  const compression = fields.compression ?? "none";
  if (compression !== "none" && compression !== "lz4") {
    throw new MigrationError("EINVAL", `unknown compression ${JSON.stringify(compression)} (use "lz4" or "none")`);
  }
  // Only a compressed stream needs 1.1: the others stay 1.0, readable by 1.0 readers.
  const minor = compression === "lz4" ? 1 : 0;
  bytes.set(MAGIC, 0);
  view.setUint16(8, FORMAT_MAJOR, true);
  view.setUint16(10, minor, true);
  view.setUint32(12, length, true);
  view.setUint32(16, (fields.baseDigest === undefined ? 0 : HEADER_FLAG_INCREMENTAL) | (compression === "lz4" ? HEADER_FLAG_LZ4 : 0), true);
  view.setUint8(20, fields.checksum === "crc32c" ? ALG_CRC32C : ALG_XXH3);
  view.setUint8(21, shift);
  view.setUint16(22, fields.regions.length, true);
  view.setBigUint64(24, BigInt(totalSize), true);
  view.setUint32(32, fields.maxRecordPayload, true);
  view.setUint16(36, deviceId.length, true);
  view.setUint16(38, 0, true);
  view.setBigUint64(40, fields.baseDigest ?? 0n, true);
  let at = HEADER_FIXED;
  bytes.set(deviceId, at);
  at += deviceId.length;
  fields.regions.forEach((region, i) => {
    const name = names[i]!;
    view.setUint16(at, name.length, true);
    bytes.set(name, at + 2);
    view.setBigUint64(at + 2 + name.length, BigInt(region.size), true);
    at += 2 + name.length + 8;
  });
  const checksumValue = xxh3(bytes.subarray(0, at));
  view.setBigUint64(at, checksumValue, true);
  return {
    bytes,
    header: { ...fields, compression, major: FORMAT_MAJOR, minor, totalSize, length, checksumValue },
  };
}

/**
 * Checks the magic bytes received so far (up to 8): a stream that is not a migstream stream is
 * refused as corrupt as soon as one of them is wrong, not reported incomplete for want of bytes
 * that cannot make it valid (reading order, step 1).
 */
export function checkMagic(received: Uint8Array): void {
  for (let i = 0; i < Math.min(received.length, MAGIC.length); i++) {
    if (received[i] === MAGIC[i]) continue;
    // A TLS record starts with its type, 22 for the handshake: a peer speaking TLS to a reader
    // that does not, the one mix-up worth naming.
    throw corrupt(`bad magic (not a migstream stream${i === 0 && received[0] === TLS_HANDSHAKE ? ": it starts like a TLS handshake" : ""})`, 0);
  }
}

const TLS_HANDSHAKE = 0x16;

/**
 * Reads the fixed prefix (the first 16 bytes, the same in every version). Returns the header's
 * full length, after checking the magic and the length against `maxHeaderSize`.
 */
export function parseHeaderPrefix(prefix: Uint8Array, maxHeaderSize: number): number {
  for (let i = 0; i < MAGIC.length; i++) {
    if (prefix[i] !== MAGIC[i]) throw corrupt("bad magic (not a migstream stream)", 0);
  }
  const view = new DataView(prefix.buffer, prefix.byteOffset, HEADER_PREFIX);
  const length = view.getUint32(12, true);
  if (length < HEADER_FIXED + HEADER_CHECKSUM) throw corrupt(`header length ${length} is too small`, 12);
  if (length > maxHeaderSize) {
    throw new MigrationError("E2BIG", `stream header of ${length} bytes exceeds the limit of ${maxHeaderSize} bytes`, { recordIndex: 0, byteOffset: 12 });
  }
  return length;
}

/** Limits a reader applies to a header before it allocates anything the header asks for. */
export interface HeaderLimits {
  readonly maxStateSize: number;
  readonly maxRecordPayload: number;
}

/**
 * Verifies and parses a whole header: the checksum first, then the version (so a damaged
 * version reads as corrupt, not as incompatible), then every field.
 */
export function parseHeader(bytes: Uint8Array, limits: HeaderLimits): StreamHeader {
  const length = bytes.length;
  const view = new DataView(bytes.buffer, bytes.byteOffset, length);
  const body = length - HEADER_CHECKSUM;
  const checksumValue = view.getBigUint64(body, true);
  if (xxh3(bytes.subarray(0, body)) !== checksumValue) throw corrupt("header checksum mismatch", body);

  const major = view.getUint16(8, true);
  const minor = view.getUint16(10, true);
  if (major !== FORMAT_MAJOR || minor > FORMAT_MINOR) {
    throw new MigrationError(
      "EPROTONOSUPPORT",
      `incompatible stream: format ${major}.${minor}, this reader supports ${FORMAT_MAJOR}.0 to ${FORMAT_MAJOR}.${FORMAT_MINOR}`,
      { recordIndex: 0, byteOffset: 8 },
    );
  }
  const flags = view.getUint32(16, true);
  if ((flags & ~headerFlagsKnown(minor)) !== 0) throw corrupt(`unknown header flags 0x${flags.toString(16)} for format ${major}.${minor}`, 16);
  const alg = view.getUint8(20);
  if (alg !== ALG_XXH3 && alg !== ALG_CRC32C) throw corrupt(`unknown checksum algorithm ${alg}`, 20);
  const shift = view.getUint8(21);
  if (shift < MIN_PAGE_SHIFT || shift > MAX_PAGE_SHIFT) throw corrupt(`page shift ${shift} out of range`, 21);
  const pageSize = 2 ** shift;
  const regionCount = view.getUint16(22, true);
  if (regionCount < 1 || regionCount > MAX_REGIONS) throw corrupt(`region count ${regionCount} out of range`, 22);
  const total = view.getBigUint64(24, true);
  if (total > BigInt(limits.maxStateSize)) {
    throw new MigrationError("E2BIG", `state of ${total} bytes exceeds the limit of ${limits.maxStateSize} bytes`, { recordIndex: 0, byteOffset: 24 });
  }
  const totalSize = Number(total);
  const maxRecordPayload = view.getUint32(32, true);
  if (maxRecordPayload < pageSize) throw corrupt(`maximum record payload ${maxRecordPayload} is below the page size`, 32);
  if (maxRecordPayload > limits.maxRecordPayload) {
    throw new MigrationError("E2BIG", `stream uses records of up to ${maxRecordPayload} bytes, above the limit of ${limits.maxRecordPayload}`, {
      recordIndex: 0,
      byteOffset: 32,
    });
  }
  const idLength = view.getUint16(36, true);
  if (view.getUint16(38, true) !== 0) throw corrupt("reserved header field is not zero", 38);
  const baseField = view.getBigUint64(40, true);
  const incremental = (flags & HEADER_FLAG_INCREMENTAL) !== 0;
  if (!incremental && baseField !== 0n) throw corrupt("base identity set on a full stream", 40);

  let at = HEADER_FIXED;
  if (idLength > MAX_DEVICE_ID_BYTES || at + idLength > body) throw corrupt("device id overruns the header", 36);
  const deviceId = decodeText(bytes.subarray(at, at + idLength), "device id", at);
  at += idLength;
  const regions: RegionSpec[] = [];
  const names = new Set<string>();
  let sum = 0n;
  for (let i = 0; i < regionCount; i++) {
    if (at + 2 > body) throw corrupt(`region table overruns the header at region ${i}`, at);
    const nameLength = view.getUint16(at, true);
    if (nameLength < 1 || nameLength > MAX_NAME_BYTES || at + 2 + nameLength + 8 > body) {
      throw corrupt(`bad name length ${nameLength} for region ${i}`, at);
    }
    const name = decodeText(bytes.subarray(at + 2, at + 2 + nameLength), `region ${i} name`, at + 2);
    if (names.has(name)) throw corrupt(`duplicate region name ${JSON.stringify(name)}`, at + 2);
    names.add(name);
    const size = view.getBigUint64(at + 2 + nameLength, true);
    if (size > BigInt(MAX_REGION_PAGES) * BigInt(pageSize)) throw corrupt(`region ${JSON.stringify(name)} has more than 2^32-1 pages`, at + 2 + nameLength);
    sum += size;
    if (sum > total) throw corrupt("region sizes exceed the total state size", at + 2 + nameLength);
    regions.push({ name, size: Number(size) });
    at += 2 + nameLength + 8;
  }
  if (sum !== total) throw corrupt(`region sizes add up to ${sum}, header says ${total}`, 24);
  if (at !== body) throw corrupt(`${body - at} unexplained bytes at the end of the header`, at);
  return {
    major,
    minor,
    checksum: alg === ALG_CRC32C ? "crc32c" : "xxh3",
    pageSize,
    totalSize,
    maxRecordPayload,
    deviceId,
    baseDigest: incremental ? baseField : undefined,
    regions,
    compression: (flags & HEADER_FLAG_LZ4) !== 0 ? "lz4" : "none",
    length,
    checksumValue,
  };
}

function decodeText(bytes: Uint8Array, what: string, offset: number): string {
  try {
    return utf8Strict.decode(bytes);
  } catch {
    throw corrupt(`${what} is not valid UTF-8`, offset);
  }
}
