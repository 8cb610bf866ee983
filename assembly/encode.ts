// Record framing for the encoder: walks the pages of one window of a region, classifies each
// (skipped as clean, zero, XBZRLE delta against the receiver's copy, or raw), merges runs of the
// same kind into records, and writes them (header, payload, checksum) into the output buffer.
// One call covers a whole window; it returns early only when the output buffer is full.
import { RECORD_HEADER, RECORD_TRAILER, TAG_DELTA, TAG_LZ4, TAG_PAGES, TAG_ZERO } from "./format";
import { chainDigest, recordChecksum } from "./checksum";
import { LZ4_TABLE_ENTRIES, lz4_compress } from "./lz4";
import { bytesEqual, bytesZero } from "./mem";
import { xbzrle_encode } from "./xbzrle";

// Encoder context layout (mirrored by src/codec/contexts.ts).
const E_CUR = 0; // u32 window data
const E_SHADOW = 4; // u32 receiver's copy of the window (0: none)
const E_BITMAP = 8; // u32 pages to consider, one bit each (0: all)
const E_LEN = 12; // u32 window length
const E_PAGE = 16; // u32 page size
const E_CURSOR = 20; // u32 next page of the window (in/out)
const E_OUT = 24; // u32 output buffer
const E_OUTCAP = 28; // u32 output capacity
const E_OUTLEN = 32; // u32 output bytes used (in/out)
const E_MAXPAYLOAD = 36; // u32 largest payload a record may carry
const E_SEQ = 40; // u32 next record sequence number (in/out)
const E_REGION = 44; // u16 region index
const E_ALG = 46; // u8 checksum algorithm
const E_MODE = 47; // u8 MODE_* bits
const E_OFFSET = 48; // u64 region offset of the window's first byte
const E_DIGEST = 56; // u64 running stream digest (in/out)
const E_PAGES_RAW = 64; // u32 counters (in/out, cumulative)
const E_PAGES_ZERO = 68;
const E_PAGES_DELTA = 72;
const E_PAGES_CLEAN = 76;
const E_RECORDS = 80;
const E_SCRATCH = 84; // u32 room for one trial delta: page size + 64 bytes
// The record still open at the end of the output (it may grow in the next window, so records
// depend only on the state, never on how it was split into windows).
const E_REC_TAG = 88; // u8 its kind (0: none)
const E_REC_REGION = 90; // u16
const E_REC_PAYLOAD = 92; // u32 payload bytes so far
const E_REC_PAGES = 96; // u32
const E_REC_OFFSET = 104; // u64 region offset of its first page
// Compression (MODE_LZ4): a raw record is LZ4-compressed when it closes, if that is smaller.
const E_LZ4_SCRATCH = 112; // u32 hash table (16 KiB) then room for a block of max payload bytes
const E_PAGES_LZ4 = 116; // u32 raw pages that went out compressed (also counted in PAGES_RAW)
const E_RECORDS_LZ4 = 120; // u32 compressed records
const E_LZ4_PACKED = 128; // u64 payload bytes of compressed records
const E_LZ4_COVERED = 136; // u64 state bytes those records cover

const MODE_DELTA: u8 = 1; // try XBZRLE against the shadow
const MODE_UPDATE_SHADOW: u8 = 2; // after sending a page, the shadow holds what the receiver holds
const MODE_SKIP_CLEAN: u8 = 4; // pages equal to the shadow are not sent
const MODE_LZ4: u8 = 8; // compress raw records with LZ4 when smaller

/**
 * A raw record whose first 64 KiB do not compress by 1/32 is sent raw: random data then costs
 * one short trial per record. Mixed records (some random pages first) still get a fair try.
 */
const LZ4_BAIL_AFTER: u32 = 64 * 1024;
export const ENCODE_DONE: i32 = 0;
export const ENCODE_OUTPUT_FULL: i32 = 1;

export function encode_context_size(): u32 {
  return 144;
}

/** Bytes the E_LZ4_SCRATCH area needs for records of up to `maxPayload` bytes. */
export function encode_lz4_scratch_size(maxPayload: u32): u32 {
  return <u32>(LZ4_TABLE_ENTRIES * 4) + maxPayload;
}

/**
 * Replaces the raw record being closed at `start` (payload `payload` bytes) by an LZ4 record
 * when that is smaller: `u32 uncompressed length`, then the block. Returns the payload length
 * the record now has (the same when it stays raw); the tag is rewritten by the caller.
 */
function compressRecord(ctx: usize, start: usize, payload: usize): usize {
  if (payload <= 5) return payload;
  const scratch = <usize>load<u32>(ctx, E_LZ4_SCRATCH);
  const table = scratch;
  const block = scratch + LZ4_TABLE_ENTRIES * 4;
  const src = start + RECORD_HEADER;
  // Smaller by at least one byte with the length prefix, or not at all.
  const n = lz4_compress(src, payload, block, payload - 5, table, LZ4_BAIL_AFTER);
  if (n < 0) return payload;
  store<u32>(src, <u32>payload);
  memory.copy(src + 4, block, <usize>n);
  store<u32>(ctx, load<u32>(ctx, E_RECORDS_LZ4) + 1, E_RECORDS_LZ4);
  store<u64>(ctx, load<u64>(ctx, E_LZ4_PACKED) + <u64>(4 + n), E_LZ4_PACKED);
  store<u64>(ctx, load<u64>(ctx, E_LZ4_COVERED) + <u64>payload, E_LZ4_COVERED);
  return 4 + <usize>n;
}

export function encode_window(ctx: usize): i32 {
  const cur = <usize>load<u32>(ctx, E_CUR);
  const shadow = <usize>load<u32>(ctx, E_SHADOW);
  const bitmap = <usize>load<u32>(ctx, E_BITMAP);
  const len = <usize>load<u32>(ctx, E_LEN);
  const pageSize = <usize>load<u32>(ctx, E_PAGE);
  const out = <usize>load<u32>(ctx, E_OUT);
  const outCap = <usize>load<u32>(ctx, E_OUTCAP);
  const maxPayload = <usize>load<u32>(ctx, E_MAXPAYLOAD);
  const region = load<u16>(ctx, E_REGION);
  const alg = load<u8>(ctx, E_ALG);
  const mode = load<u8>(ctx, E_MODE);
  const windowOffset = load<u64>(ctx, E_OFFSET);
  const scratch = <usize>load<u32>(ctx, E_SCRATCH);
  const tryDelta = shadow != 0 && (mode & MODE_DELTA) != 0;
  const updateShadow = shadow != 0 && (mode & MODE_UPDATE_SHADOW) != 0;
  const skipClean = shadow != 0 && (mode & MODE_SKIP_CLEAN) != 0;
  const compress = (mode & MODE_LZ4) != 0;

  let outLen = <usize>load<u32>(ctx, E_OUTLEN);
  let seq = load<u32>(ctx, E_SEQ);
  let digest = load<u64>(ctx, E_DIGEST);
  let pagesRaw = load<u32>(ctx, E_PAGES_RAW);
  let pagesZero = load<u32>(ctx, E_PAGES_ZERO);
  let pagesDelta = load<u32>(ctx, E_PAGES_DELTA);
  let pagesClean = load<u32>(ctx, E_PAGES_CLEAN);
  let records = load<u32>(ctx, E_RECORDS);

  const pages = <u32>((len + pageSize - 1) / pageSize);
  let p = load<u32>(ctx, E_CURSOR);
  let status = ENCODE_DONE;

  // The record being built, always the last thing in the output.
  let recTag = load<u8>(ctx, E_REC_TAG);
  let recRegion = load<u16>(ctx, E_REC_REGION);
  let recPayload = <usize>load<u32>(ctx, E_REC_PAYLOAD);
  let recPages = load<u32>(ctx, E_REC_PAGES);
  let recOffset = load<u64>(ctx, E_REC_OFFSET);
  const recordRoom = RECORD_HEADER + maxPayload + RECORD_TRAILER;

  while (p < pages) {
    if (bitmap != 0 && (load<u8>(bitmap + (p >> 3)) & (<u8>1 << <u8>(p & 7))) == 0) {
      // Sparse rounds: skip 64 clean pages per load, so a round costs what it sends.
      if ((p & 63) == 0 && p + 64 <= pages && load<u64>(bitmap + (p >> 3)) == 0) p += 64;
      else p++;
      continue;
    }
    const pageOff = <usize>p * pageSize;
    const pageLen = min(pageSize, len - pageOff);
    const src = cur + pageOff;
    const sh = shadow + pageOff;
    if (skipClean && bytesEqual(src, sh, pageLen)) {
      pagesClean++;
      p++;
      continue;
    }

    let tag = TAG_PAGES;
    let add = pageLen;
    let deltaLen: i32 = 0;
    if (bytesZero(src, pageLen)) {
      tag = TAG_ZERO;
      add = 0;
    } else if (tryDelta && pageLen > 5) {
      // A delta is worth it only when it is smaller than the raw page, length prefix included.
      deltaLen = xbzrle_encode(sh, src, pageLen, scratch, pageLen - 5);
      if (deltaLen >= 0) {
        tag = TAG_DELTA;
        add = 4 + <usize>deltaLen;
      }
    }

    // Records close only for what the state holds (another kind, a gap, the payload limit),
    // and a new one starts only with room for a whole maximal record behind it.
    const pageOffset = windowOffset + <u64>pageOff;
    const extends_ =
      recTag == tag &&
      recRegion == region &&
      recOffset + <u64>recPages * <u64>pageSize == pageOffset &&
      recPayload + add <= maxPayload;
    if (!extends_) {
      if (recTag != 0) {
        const start = out + outLen;
        if (compress && recTag == TAG_PAGES) {
          const packed = compressRecord(ctx, start, recPayload);
          if (packed != recPayload) {
            store<u32>(ctx, load<u32>(ctx, E_PAGES_LZ4) + recPages, E_PAGES_LZ4);
            recTag = TAG_LZ4;
            recPayload = packed;
          }
        }
        const size = closeRecord(start, recTag, 0, recRegion, recPayload, seq, recPages, recOffset, alg);
        digest = chainDigest(digest, load<u64>(start + RECORD_HEADER + recPayload));
        outLen += size;
        seq++;
        records++;
        recTag = 0;
      }
      if (outLen + recordRoom > outCap) {
        status = ENCODE_OUTPUT_FULL;
        break;
      }
      recTag = tag;
      recRegion = region;
      recPayload = 0;
      recOffset = pageOffset;
      recPages = 0;
    }

    const dest = out + outLen + RECORD_HEADER + recPayload;
    if (tag == TAG_PAGES) {
      memory.copy(dest, src, pageLen);
      pagesRaw++;
    } else if (tag == TAG_DELTA) {
      store<u32>(dest, <u32>deltaLen);
      memory.copy(dest + 4, scratch, <usize>deltaLen);
      pagesDelta++;
    } else {
      pagesZero++;
    }
    if (updateShadow) {
      if (tag == TAG_ZERO) memory.fill(sh, 0, pageLen);
      else memory.copy(sh, src, pageLen);
    }
    recPayload += add;
    recPages++;
    p++;
  }

  store<u8>(ctx, recTag, E_REC_TAG);
  store<u16>(ctx, recRegion, E_REC_REGION);
  store<u32>(ctx, <u32>recPayload, E_REC_PAYLOAD);
  store<u32>(ctx, recPages, E_REC_PAGES);
  store<u64>(ctx, recOffset, E_REC_OFFSET);
  store<u32>(ctx, p, E_CURSOR);
  store<u32>(ctx, <u32>outLen, E_OUTLEN);
  store<u32>(ctx, seq, E_SEQ);
  store<u64>(ctx, digest, E_DIGEST);
  store<u32>(ctx, pagesRaw, E_PAGES_RAW);
  store<u32>(ctx, pagesZero, E_PAGES_ZERO);
  store<u32>(ctx, pagesDelta, E_PAGES_DELTA);
  store<u32>(ctx, pagesClean, E_PAGES_CLEAN);
  store<u32>(ctx, records, E_RECORDS);
  return status;
}

/** Closes the open record, if any (before a config, round or end record, or the last drain). */
export function encode_flush(ctx: usize): void {
  let tag = load<u8>(ctx, E_REC_TAG);
  if (tag == 0) return;
  const start = <usize>load<u32>(ctx, E_OUT) + <usize>load<u32>(ctx, E_OUTLEN);
  let payload = <usize>load<u32>(ctx, E_REC_PAYLOAD);
  if ((load<u8>(ctx, E_MODE) & MODE_LZ4) != 0 && tag == TAG_PAGES) {
    const packed = compressRecord(ctx, start, payload);
    if (packed != payload) {
      store<u32>(ctx, load<u32>(ctx, E_PAGES_LZ4) + load<u32>(ctx, E_REC_PAGES), E_PAGES_LZ4);
      tag = TAG_LZ4;
      payload = packed;
    }
  }
  const seq = load<u32>(ctx, E_SEQ);
  const size = closeRecord(start, tag, 0, load<u16>(ctx, E_REC_REGION), payload, seq, load<u32>(ctx, E_REC_PAGES), load<u64>(ctx, E_REC_OFFSET), load<u8>(ctx, E_ALG));
  store<u64>(ctx, chainDigest(load<u64>(ctx, E_DIGEST), load<u64>(start + RECORD_HEADER + payload)), E_DIGEST);
  store<u32>(ctx, seq + 1, E_SEQ);
  store<u32>(ctx, load<u32>(ctx, E_OUTLEN) + <u32>size, E_OUTLEN);
  store<u32>(ctx, load<u32>(ctx, E_RECORDS) + 1, E_RECORDS);
  store<u8>(ctx, 0, E_REC_TAG);
}

/** Writes a record's header and checksum around its payload; returns the record's size. */
function closeRecord(
  start: usize,
  tag: u8,
  flags: u8,
  region: u16,
  payload: usize,
  seq: u32,
  pages: u32,
  offset: u64,
  alg: u8,
): usize {
  store<u8>(start, tag, 0);
  store<u8>(start, flags, 1);
  store<u16>(start, region, 2);
  store<u32>(start, <u32>payload, 4);
  store<u32>(start, seq, 8);
  store<u32>(start, pages, 12);
  store<u64>(start, offset, 16);
  store<u64>(start + RECORD_HEADER + payload, recordChecksum(alg, start, RECORD_HEADER + payload));
  return RECORD_HEADER + payload + RECORD_TRAILER;
}

/**
 * Appends a record whose payload the caller already placed after the header's room at the end
 * of the output (config blobs, round and end markers: region, offset and page count are 0).
 * Returns the record's size and advances the context like encode_window does.
 */
export function frame_record(ctx: usize, tag: u8, flags: u8, payload: u32): u32 {
  const start = <usize>load<u32>(ctx, E_OUT) + <usize>load<u32>(ctx, E_OUTLEN);
  const seq = load<u32>(ctx, E_SEQ);
  const size = closeRecord(start, tag, flags, 0, <usize>payload, seq, 0, 0, load<u8>(ctx, E_ALG));
  store<u64>(ctx, chainDigest(load<u64>(ctx, E_DIGEST), load<u64>(start + RECORD_HEADER + <usize>payload)), E_DIGEST);
  store<u32>(ctx, seq + 1, E_SEQ);
  store<u32>(ctx, load<u32>(ctx, E_OUTLEN) + <u32>size, E_OUTLEN);
  store<u32>(ctx, load<u32>(ctx, E_RECORDS) + 1, E_RECORDS);
  return <u32>size;
}

/**
 * The record boundaries encode_window would make, without writing anything: walks pages
 * [E_CURSOR, stop) of the window like encode_window does without a shadow (zero or raw, runs
 * merged up to the payload limit, gaps from the dirty bitmap), keeping the open record
 * (E_REC_*) and the count of closed records (E_SEQ) up to date. The worker pool plans with it
 * where to cut a region so that pieces encoded apart join into the very bytes of one encoder.
 */
export function encode_plan(ctx: usize, stop: u32): void {
  const cur = <usize>load<u32>(ctx, E_CUR);
  const bitmap = <usize>load<u32>(ctx, E_BITMAP);
  const len = <usize>load<u32>(ctx, E_LEN);
  const pageSize = <usize>load<u32>(ctx, E_PAGE);
  const maxPayload = <usize>load<u32>(ctx, E_MAXPAYLOAD);
  const region = load<u16>(ctx, E_REGION);
  const windowOffset = load<u64>(ctx, E_OFFSET);
  const pages = <u32>((len + pageSize - 1) / pageSize);
  const end = min(stop, pages);
  let p = load<u32>(ctx, E_CURSOR);
  let seq = load<u32>(ctx, E_SEQ);
  let recTag = load<u8>(ctx, E_REC_TAG);
  let recRegion = load<u16>(ctx, E_REC_REGION);
  let recPayload = <usize>load<u32>(ctx, E_REC_PAYLOAD);
  let recPages = load<u32>(ctx, E_REC_PAGES);
  let recOffset = load<u64>(ctx, E_REC_OFFSET);
  while (p < end) {
    if (bitmap != 0 && (load<u8>(bitmap + (p >> 3)) & (<u8>1 << <u8>(p & 7))) == 0) {
      if ((p & 63) == 0 && p + 64 <= end && load<u64>(bitmap + (p >> 3)) == 0) p += 64;
      else p++;
      continue;
    }
    const pageOff = <usize>p * pageSize;
    const pageLen = min(pageSize, len - pageOff);
    const zero = bytesZero(cur + pageOff, pageLen);
    const tag = zero ? TAG_ZERO : TAG_PAGES;
    const add: usize = zero ? 0 : pageLen;
    const pageOffset = windowOffset + <u64>pageOff;
    const extends_ =
      recTag == tag && recRegion == region && recOffset + <u64>recPages * <u64>pageSize == pageOffset && recPayload + add <= maxPayload;
    if (!extends_) {
      if (recTag != 0) seq++;
      recTag = tag;
      recRegion = region;
      recPayload = 0;
      recOffset = pageOffset;
      recPages = 0;
    }
    recPayload += add;
    recPages++;
    p++;
  }
  store<u8>(ctx, recTag, E_REC_TAG);
  store<u16>(ctx, recRegion, E_REC_REGION);
  store<u32>(ctx, <u32>recPayload, E_REC_PAYLOAD);
  store<u32>(ctx, recPages, E_REC_PAGES);
  store<u64>(ctx, recOffset, E_REC_OFFSET);
  store<u32>(ctx, p, E_CURSOR);
  store<u32>(ctx, seq, E_SEQ);
}
