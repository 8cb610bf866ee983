// Wire-format constants (docs/FORMAT.md is the spec; assembly/format.ts mirrors the record part).

/** "\x89MIG\r\n\x1a\n": a high byte, the name, and line-ending bytes that text-mode mangling breaks. */
export const MAGIC = Uint8Array.of(0x89, 0x4d, 0x49, 0x47, 0x0d, 0x0a, 0x1a, 0x0a);
export const FORMAT_MAJOR = 1;
/**
 * The newest minor this code reads and writes. Streams that use no 1.1 feature (compression) are
 * still written as 1.0, byte for byte as before, so 1.0 readers keep reading them.
 */
export const FORMAT_MINOR = 1;

/** magic(8) major(2) minor(2) header length(4): the same in every version of the format. */
export const HEADER_PREFIX = 16;
/** Fixed fields of a 1.x header before the device id (see FORMAT.md). */
export const HEADER_FIXED = 48;
export const HEADER_CHECKSUM = 8;

export const HEADER_FLAG_INCREMENTAL = 0x1;
/** 1.1: the stream may carry LZ4 records (tag 0x04). */
export const HEADER_FLAG_LZ4 = 0x2;
/** Header flags each minor version defines. */
export function headerFlagsKnown(minor: number): number {
  return minor >= 1 ? HEADER_FLAG_INCREMENTAL | HEADER_FLAG_LZ4 : HEADER_FLAG_INCREMENTAL;
}

/** Page compression a stream may use ("none": the 1.0 record kinds only). */
export type Compression = "none" | "lz4";

export const ALG_XXH3 = 1;
export const ALG_CRC32C = 2;
export type ChecksumAlgorithm = "xxh3" | "crc32c";

export const MIN_PAGE_SHIFT = 6;
export const MAX_PAGE_SHIFT = 20;
export const MAX_REGIONS = 1024;
/** Pages of one region are numbered in 32 bits (records carry u32 page counts). */
export const MAX_REGION_PAGES = 0xffff_ffff;
export const MAX_NAME_BYTES = 255;
export const MAX_DEVICE_ID_BYTES = 1024;

export const RECORD_HEADER = 24;
export const RECORD_TRAILER = 8;
export const RECORD_OVERHEAD = RECORD_HEADER + RECORD_TRAILER;

export const TAG_PAGES = 0x01;
export const TAG_ZERO = 0x02;
export const TAG_DELTA = 0x03;
/** 1.1: pages as `u32 uncompressed length` + one LZ4 block. */
export const TAG_LZ4 = 0x04;
export const TAG_CONFIG = 0x10;
export const TAG_ROUND = 0x11;
export const TAG_END = 0x12;
export const RECORD_FLAG_OPTIONAL = 0x01;

export const ROUND_PAYLOAD = 32;
export const END_PAYLOAD = 24;

/** Encoder defaults. */
export const DEFAULT_PAGE_SIZE = 4096;
export const DEFAULT_MAX_RECORD_PAYLOAD = 1 << 20;

/** Decoder limits: safe defaults, each an option. */
export const DEFAULT_LIMITS = {
  maxHeaderSize: 64 * 1024,
  maxRecordPayload: 16 * 1024 * 1024,
  maxStateSize: 1024 * 1024 * 1024,
} as const;

/** Names of record tags, for summaries and messages. */
export function tagName(tag: number): string {
  switch (tag) {
    case TAG_PAGES:
      return "pages";
    case TAG_ZERO:
      return "zero";
    case TAG_DELTA:
      return "delta";
    case TAG_LZ4:
      return "lz4";
    case TAG_CONFIG:
      return "config";
    case TAG_ROUND:
      return "round";
    case TAG_END:
      return "end";
    default:
      return `unknown(0x${tag.toString(16).padStart(2, "0")})`;
  }
}
