// Record parsing for the decoder: takes a window of stream bytes, and for each complete record
// checks its framing fields against the limits, verifies its checksum, then checks its meaning
// (sequence, region, bounds, payload shape) and, when applying in memory, applies it to the
// staging regions. Nothing is applied from a record that did not verify first.
import {
  END_PAYLOAD,
  FLAG_OPTIONAL,
  RECORD_HEADER,
  RECORD_TRAILER,
  ROUND_PAYLOAD,
  TAG_CONFIG,
  TAG_DELTA,
  TAG_END,
  TAG_LZ4,
  TAG_PAGES,
  TAG_ROUND,
  TAG_ZERO,
} from "./format";
import { chainDigest, recordChecksum } from "./checksum";
import { validate as xbzrleValidate, xbzrle_decode } from "./xbzrle";
import { bitmap_clear_range, bitmap_set_range } from "./bitmap";
import { lz4_decompress, lz4_error_offset } from "./lz4";
import { PRECHECK_ENTRY } from "./parallel";

// Decoder context layout (mirrored by src/codec/contexts.ts).
const D_IN = 0; // u32 window
const D_INLEN = 4; // u32 bytes in the window
const D_POS = 8; // u32 parse position in the window (in/out)
const D_REGIONS = 12; // u32 region table, REGION_ENTRY bytes per region
const D_NREGIONS = 16; // u16
const D_ALG = 18; // u8
const D_SHIFT = 19; // u8 log2(page size)
const D_MAXPAYLOAD = 20; // u32
const D_SEQ = 24; // u32 expected sequence number (in/out)
const D_MODE = 28; // u32 MODE_* bits
const D_DIGEST = 32; // u64 running digest (in/out)
const D_STREAMPOS = 40; // u64 stream offset of window byte 0
const D_ERR_RECORD = 48; // u32 record index of the error
const D_NEEDED = 52; // u32 size of the incomplete record at pos, once its header is known
const D_ERR_OFFSET = 56; // u64 stream offset of the error
const D_CONFIGS = 64; // u32 config records seen
const D_ROUNDS = 68; // u32 round markers seen
const D_R_TAG = 72; // u8 last record handed to the caller
const D_R_FLAGS = 73; // u8
const D_R_REGION = 74; // u16
const D_R_LEN = 76; // u32 payload length
const D_R_PAGES = 80; // u32
const D_R_PAYLOAD = 84; // u32 payload pointer
const D_R_OFFSET = 88; // u64
const D_PAGES_RAW = 96; // u32 counters
const D_PAGES_ZERO = 100;
const D_PAGES_DELTA = 104;
const D_REC_RAW = 108;
const D_REC_ZERO = 112;
const D_REC_DELTA = 116;
const D_REC_SKIPPED = 120;
// Work accounting and the cheap handling of repeated ZERO coverage (docs/FORMAT.md, limits).
const D_CHUNK_SHIFT = 128; // u32 log2(copy-on-write chunk size)
const D_APPLIED = 136; // u64 pages applied so far (ZERO pages already known zero excluded)
const D_BUDGET = 144; // u64 pages that may be applied before any round marker
const D_BUDGET_ROUND = 152; // u64 more pages allowed per round marker seen
const D_COPIED = 160; // u64 base bytes copied into staging (copy-on-write)
const D_ZRUN_REGION = 168; // u32 region of the ZERO record whose runs are being handed out
const D_ZRUN_NEXT = 172; // u32 next page to look at
const D_ZRUN_END = 176; // u32 one past its last page
// 1.1 compression (MODE_LZ4).
const D_LZ4_SCRATCH = 124; // u32 max-payload bytes to decode LZ4 records into when not applying
const D_R_PACKED = 180; // u32 wire payload of the last record handed out if it was LZ4, else 0
const D_PAGES_LZ4 = 184; // u32
const D_REC_LZ4 = 188; // u32
const D_LZ4_BYTES = 192; // u64 payload bytes of LZ4 records
// Work done ahead by the worker pool (assembly/parallel.ts precheck_records): a table of entries
// in stream order; a record with an entry for its stream offset takes its checksum (and, when
// not applying, its decoded LZ4 block and verdict) from there instead of computing them.
const D_PRE = 200; // u32 table (0: none)
const D_PRE_COUNT = 204; // u32 entries
const D_PRE_NEXT = 208; // u32 first entry not yet passed

// Region table entry.
const R_SIZE = 0; // u64 region size
const R_STAGING = 8; // u32 staging copy (applying in memory)
const R_HAVE = 12; // u32 bitmap of pages the target holds
const R_PAGES = 16; // u32 page count
const R_ZERO = 20; // u32 bitmap of pages known to hold zeros in the target (0: not tracked)
const R_BASE = 24; // u32 base region staging copies on write from (0: staging is complete)
const R_CHUNKS = 28; // u32 bitmap of chunks already copied into staging (with R_BASE)
const REGION_ENTRY: usize = 32;

const MODE_APPLY: u32 = 1; // apply page records to the staging regions here
const MODE_ZERO_RUNS: u32 = 2; // hand ZERO records out only over pages not known zero
const MODE_ENDED: u32 = 4; // the end-of-stream record was verified
const MODE_ZRUN: u32 = 8; // runs of a ZERO record are being handed out
const MODE_LZ4: u32 = 16; // the header allows LZ4 records

export const DECODE_NEED_MORE: i32 = 0;
export const DECODE_RECORD: i32 = 1; // a record for the caller is described at D_R_*
export const DECODE_END: i32 = 2;
// Applying: the record at D_POS writes into region D_R_REGION, whose staging is not there yet
// (0: it is made when a record first writes, so a stream's claim costs nothing until pages
// arrive). Nothing of the record was applied or counted; call again once R_STAGING is set.
export const DECODE_NEED_STAGING: i32 = 3;
// Not applying: the LZ4 record at D_POS needs D_LZ4_SCRATCH, not made yet (made on the first
// LZ4 record, not for a header that merely allows them). Nothing of the record was consumed.
export const DECODE_NEED_SCRATCH: i32 = 4;

// Errors (negative), mapped to messages and codes by src/codec/decode-errors.ts.
export const ERR_UNKNOWN_TAG: i32 = -1;
export const ERR_FLAGS: i32 = -2;
export const ERR_SEQUENCE: i32 = -3;
export const ERR_REGION: i32 = -4;
export const ERR_BOUNDS: i32 = -5;
export const ERR_LENGTH: i32 = -6;
export const ERR_LIMIT: i32 = -7;
export const ERR_CHECKSUM: i32 = -8;
export const ERR_DELTA: i32 = -9;
export const ERR_NOT_HELD: i32 = -10;
export const ERR_END_COUNT: i32 = -11;
export const ERR_END_BYTES: i32 = -12;
export const ERR_END_DIGEST: i32 = -13;
export const ERR_DUP_CONFIG: i32 = -14;
export const ERR_ROUND: i32 = -15;
export const ERR_TRAILING: i32 = -16;
export const ERR_FIELDS: i32 = -17;
export const ERR_WORK: i32 = -18;
export const ERR_LZ4: i32 = -19;

export function decode_context_size(): u32 {
  return 216;
}

/** The precheck entry for the record at stream offset `at`, or 0 (records come in order). */
function preEntry(ctx: usize, at: u64): usize {
  const table = <usize>load<u32>(ctx, D_PRE);
  if (table == 0) return 0;
  const n = load<u32>(ctx, D_PRE_COUNT);
  let i = load<u32>(ctx, D_PRE_NEXT);
  while (i < n && load<u64>(table + <usize>i * PRECHECK_ENTRY) < at) i++;
  store<u32>(ctx, i, D_PRE_NEXT);
  if (i < n && load<u64>(table + <usize>i * PRECHECK_ENTRY) == at) return table + <usize>i * PRECHECK_ENTRY;
  return 0;
}

export function region_entry_size(): u32 {
  return <u32>REGION_ENTRY;
}

@inline
function fail(ctx: usize, code: i32, pos: usize): i32 {
  store<u32>(ctx, load<u32>(ctx, D_SEQ), D_ERR_RECORD);
  store<u64>(ctx, load<u64>(ctx, D_STREAMPOS) + <u64>pos, D_ERR_OFFSET);
  store<u32>(ctx, <u32>pos, D_POS);
  return code;
}

/** A malformed LZ4 block: the error names the block's byte at fault, not the record's start. */
function failLz4(ctx: usize, pos: usize, errorOffset: u32 = lz4_error_offset()): i32 {
  fail(ctx, ERR_LZ4, pos);
  store<u64>(ctx, load<u64>(ctx, D_STREAMPOS) + <u64>(pos + RECORD_HEADER + 4) + <u64>errorOffset, D_ERR_OFFSET);
  return ERR_LZ4;
}

@inline
function describe(ctx: usize, rec: usize): void {
  store<u8>(ctx, load<u8>(rec, 0), D_R_TAG);
  store<u8>(ctx, load<u8>(rec, 1), D_R_FLAGS);
  store<u16>(ctx, load<u16>(rec, 2), D_R_REGION);
  store<u32>(ctx, load<u32>(rec, 4), D_R_LEN);
  store<u32>(ctx, load<u32>(rec, 12), D_R_PAGES);
  store<u32>(ctx, <u32>(rec + RECORD_HEADER), D_R_PAYLOAD);
  store<u64>(ctx, load<u64>(rec, 16), D_R_OFFSET);
}

export function decode_window(ctx: usize): i32 {
  const input = <usize>load<u32>(ctx, D_IN);
  const inLen = <usize>load<u32>(ctx, D_INLEN);
  const regions = <usize>load<u32>(ctx, D_REGIONS);
  const nRegions = load<u16>(ctx, D_NREGIONS);
  const alg = load<u8>(ctx, D_ALG);
  const shift = <u64>load<u8>(ctx, D_SHIFT);
  const pageSize: u64 = <u64>1 << shift;
  const maxPayload = <usize>load<u32>(ctx, D_MAXPAYLOAD);
  const mode = load<u32>(ctx, D_MODE);
  const apply = (mode & MODE_APPLY) != 0;
  const lz4 = (mode & MODE_LZ4) != 0;
  let pos = <usize>load<u32>(ctx, D_POS);

  while (true) {
    if ((load<u32>(ctx, D_MODE) & MODE_ZRUN) != 0) {
      // The rest of a verified ZERO record, one run of pages not yet known zero at a time.
      const region = load<u32>(ctx, D_ZRUN_REGION);
      const zero = <usize>load<u32>(regions + <usize>region * REGION_ENTRY, R_ZERO);
      const end = load<u32>(ctx, D_ZRUN_END);
      const a = nextWith(zero, load<u32>(ctx, D_ZRUN_NEXT), end, false);
      if (a < end) {
        const b = nextWith(zero, a, end, true);
        bitmap_set_range(zero, a, b - a);
        store<u32>(ctx, b, D_ZRUN_NEXT);
        store<u8>(ctx, TAG_ZERO, D_R_TAG);
        store<u8>(ctx, 0, D_R_FLAGS);
        store<u16>(ctx, <u16>region, D_R_REGION);
        store<u32>(ctx, 0, D_R_LEN);
        store<u32>(ctx, b - a, D_R_PAGES);
        store<u32>(ctx, <u32>input, D_R_PAYLOAD);
        store<u64>(ctx, <u64>a << shift, D_R_OFFSET);
        store<u32>(ctx, <u32>pos, D_POS);
        return DECODE_RECORD;
      }
      store<u32>(ctx, load<u32>(ctx, D_MODE) & ~MODE_ZRUN, D_MODE);
    }
    const avail = inLen - pos;
    if ((load<u32>(ctx, D_MODE) & MODE_ENDED) != 0) {
      if (avail != 0) return fail(ctx, ERR_TRAILING, pos);
      store<u32>(ctx, <u32>pos, D_POS);
      return DECODE_NEED_MORE;
    }
    if (avail < RECORD_HEADER) {
      store<u32>(ctx, 0, D_NEEDED);
      store<u32>(ctx, <u32>pos, D_POS);
      return DECODE_NEED_MORE;
    }
    const rec = input + pos;
    const tag = load<u8>(rec, 0);
    const flags = load<u8>(rec, 1);
    const payloadLen = <usize>load<u32>(rec, 4);
    // Framing first: nothing is buffered or trusted past these two checks.
    if ((flags & ~FLAG_OPTIONAL) != 0) return fail(ctx, ERR_FLAGS, pos);
    if (payloadLen > maxPayload) return fail(ctx, ERR_LIMIT, pos);
    const size = RECORD_HEADER + payloadLen + RECORD_TRAILER;
    if (avail < size) {
      store<u32>(ctx, <u32>size, D_NEEDED);
      store<u32>(ctx, <u32>pos, D_POS);
      return DECODE_NEED_MORE;
    }
    const checksum = load<u64>(rec + RECORD_HEADER + payloadLen);
    const pre = load<u32>(ctx, D_PRE) != 0 ? preEntry(ctx, load<u64>(ctx, D_STREAMPOS) + <u64>pos) : 0;
    const computed = pre != 0 ? load<u64>(pre, 8) : recordChecksum(alg, rec, RECORD_HEADER + payloadLen);
    if (computed != checksum) return fail(ctx, ERR_CHECKSUM, pos);
    // An LZ4 block the pool decoded ahead (not applying: in staging it is decoded in place).
    const preBlock = pre != 0 && !apply ? load<u32>(pre, 16) : 0;

    // Verified: now its meaning.
    const seq = load<u32>(ctx, D_SEQ);
    if (load<u32>(rec, 8) != seq) return fail(ctx, ERR_SEQUENCE, pos);
    const regionIndex = load<u16>(rec, 2);
    const pages = load<u32>(rec, 12);
    const offset = load<u64>(rec, 16);
    const payload = rec + RECORD_HEADER;
    let result = -100;

    if (tag == TAG_PAGES || tag == TAG_ZERO || tag == TAG_DELTA || (tag == TAG_LZ4 && lz4)) {
      if (flags != 0) return fail(ctx, ERR_FLAGS, pos);
      if (regionIndex >= nRegions) return fail(ctx, ERR_REGION, pos);
      const entry = regions + <usize>regionIndex * REGION_ENTRY;
      const regionSize = load<u64>(entry, R_SIZE);
      const regionPages = load<u32>(entry, R_PAGES);
      const have = <usize>load<u32>(entry, R_HAVE);
      if (pages == 0) return fail(ctx, ERR_FIELDS, pos);
      if ((offset & (pageSize - 1)) != 0) return fail(ctx, ERR_BOUNDS, pos);
      const first = offset >> shift;
      if (first >= <u64>regionPages || <u64>pages > <u64>regionPages - first) return fail(ctx, ERR_BOUNDS, pos);
      const covered = min(<u64>pages << shift, regionSize - offset);
      const firstPage = <u32>first;

      if (tag == TAG_PAGES) {
        if (<u64>payloadLen != covered) return fail(ctx, ERR_LENGTH, pos);
      } else if (tag == TAG_ZERO) {
        if (payloadLen != 0) return fail(ctx, ERR_LENGTH, pos);
      } else if (tag == TAG_LZ4) {
        // u32 uncompressed length (= the covered length, at most a record's payload), then a
        // block that must decode to exactly that many bytes. It is decoded into the
        // record's own pages in staging (below) or into scratch (now), so a malformed block never
        // reaches a target and never writes outside the record's pages.
        if (payloadLen < 5 || <u64>load<u32>(payload) != covered || covered > <u64>maxPayload) return fail(ctx, ERR_LENGTH, pos);
        // Applying: decoded below, after the work check and copy-on-write staging.
        if (preBlock != 0) {
          if (load<i32>(pre, 20) < 0) return failLz4(ctx, pos, load<u32>(pre, 24));
        } else if (!apply) {
          if (load<u32>(ctx, D_LZ4_SCRATCH) == 0) {
            store<u32>(ctx, <u32>pos, D_POS);
            return DECODE_NEED_SCRATCH;
          }
          if (lz4_decompress(payload + 4, payloadLen - 4, <usize>load<u32>(ctx, D_LZ4_SCRATCH), <usize>covered) < 0) return failLz4(ctx, pos);
        }
      } else {
        // Each page: u32 length, then that many XBZRLE bytes, exactly filling the payload and
        // well formed for the page's length (checked here, so targets that apply records
        // themselves never see a malformed one); and a delta needs an older version of its
        // page on the target.
        let q: usize = 0;
        for (let i: u32 = 0; i < pages; i++) {
          if (payloadLen - q < 4) return fail(ctx, ERR_LENGTH, pos);
          const dlen = <usize>load<u32>(payload + q);
          if (dlen > payloadLen - q - 4) return fail(ctx, ERR_LENGTH, pos);
          const pageLen = min(<usize>pageSize, <usize>(covered - (<u64>i << shift)));
          if (xbzrleValidate(payload + q + 4, dlen, pageLen) < 0) return fail(ctx, ERR_DELTA, pos);
          q += 4 + dlen;
          const page = firstPage + i;
          if ((load<u8>(have + (page >> 3)) & (<u8>1 << <u8>(page & 7))) == 0) return fail(ctx, ERR_NOT_HELD, pos);
        }
        if (q != payloadLen) return fail(ctx, ERR_LENGTH, pos);
      }

      // Work: every page a record makes the target write counts against the budget, except
      // ZERO pages the target is known to hold as zeros already (repeated coverage is free).
      const zero = <usize>load<u32>(entry, R_ZERO);
      const work: u32 = tag == TAG_ZERO && zero != 0 ? countWith(zero, firstPage, pages, false) : pages;
      const applied = load<u64>(ctx, D_APPLIED) + <u64>work;
      const budget = load<u64>(ctx, D_BUDGET) + load<u64>(ctx, D_BUDGET_ROUND) * <u64>load<u32>(ctx, D_ROUNDS);
      if (applied > budget) return fail(ctx, ERR_WORK, pos);
      if (apply && load<u32>(entry, R_STAGING) == 0 && (tag != TAG_ZERO || work != 0)) {
        store<u16>(ctx, <u16>regionIndex, D_R_REGION);
        store<u32>(ctx, <u32>pos, D_POS);
        return DECODE_NEED_STAGING;
      }
      store<u64>(ctx, applied, D_APPLIED);

      if (apply) {
        const staging = <usize>load<u32>(entry, R_STAGING);
        if (tag == TAG_ZERO) {
          let p = firstPage;
          const end = firstPage + pages;
          while (zero != 0 && p < end) {
            const a = nextWith(zero, p, end, false);
            if (a >= end) break;
            const b = nextWith(zero, a, end, true);
            const from = <u64>a << shift;
            const to = min(<u64>b << shift, regionSize);
            materialise(ctx, entry, from, to, true);
            memory.fill(staging + <usize>from, 0, <usize>(to - from));
            p = b;
          }
          if (zero == 0) {
            materialise(ctx, entry, offset, offset + covered, true);
            memory.fill(staging + <usize>offset, 0, <usize>covered);
          }
        } else {
          materialise(ctx, entry, offset, offset + covered, tag == TAG_PAGES || tag == TAG_LZ4);
          if (tag == TAG_PAGES) {
            memory.copy(staging + <usize>offset, payload, payloadLen);
          } else if (tag == TAG_LZ4) {
            // Decoded straight into the record's own pages, once their chunks are staged.
            if (lz4_decompress(payload + 4, payloadLen - 4, staging + <usize>offset, <usize>covered) < 0) return failLz4(ctx, pos);
          } else if (apply_delta_run(payload, pages, staging + <usize>offset, <u32>shift, <usize>covered) < 0) {
            return fail(ctx, ERR_DELTA, pos);
          }
        }
      }
      if (zero != 0) {
        if (tag == TAG_ZERO) {
          if (!apply && (mode & MODE_ZERO_RUNS) != 0) {
            // Handed out run by run from the top of the loop, once this record is consumed.
            store<u32>(ctx, regionIndex, D_ZRUN_REGION);
            store<u32>(ctx, firstPage, D_ZRUN_NEXT);
            store<u32>(ctx, firstPage + pages, D_ZRUN_END);
            store<u32>(ctx, load<u32>(ctx, D_MODE) | MODE_ZRUN, D_MODE);
          } else {
            bitmap_set_range(zero, firstPage, pages);
          }
        } else {
          bitmap_clear_range(zero, firstPage, pages);
        }
      }
      markHeld(have, firstPage, pages);
      if (tag == TAG_PAGES) {
        store<u32>(ctx, load<u32>(ctx, D_PAGES_RAW) + pages, D_PAGES_RAW);
        store<u32>(ctx, load<u32>(ctx, D_REC_RAW) + 1, D_REC_RAW);
      } else if (tag == TAG_LZ4) {
        store<u32>(ctx, load<u32>(ctx, D_PAGES_LZ4) + pages, D_PAGES_LZ4);
        store<u32>(ctx, load<u32>(ctx, D_REC_LZ4) + 1, D_REC_LZ4);
        store<u64>(ctx, load<u64>(ctx, D_LZ4_BYTES) + <u64>payloadLen, D_LZ4_BYTES);
      } else if (tag == TAG_ZERO) {
        store<u32>(ctx, load<u32>(ctx, D_PAGES_ZERO) + pages, D_PAGES_ZERO);
        store<u32>(ctx, load<u32>(ctx, D_REC_ZERO) + 1, D_REC_ZERO);
      } else {
        store<u32>(ctx, load<u32>(ctx, D_PAGES_DELTA) + pages, D_PAGES_DELTA);
        store<u32>(ctx, load<u32>(ctx, D_REC_DELTA) + 1, D_REC_DELTA);
      }
      if (!apply && !(tag == TAG_ZERO && zero != 0 && (mode & MODE_ZERO_RUNS) != 0)) result = DECODE_RECORD;
    } else if (tag == TAG_CONFIG || tag == TAG_ROUND || tag == TAG_END) {
      if (flags != 0) return fail(ctx, ERR_FLAGS, pos);
      if (regionIndex != 0 || pages != 0 || offset != 0) return fail(ctx, ERR_FIELDS, pos);
      if (tag == TAG_CONFIG) {
        if (load<u32>(ctx, D_CONFIGS) != 0) return fail(ctx, ERR_DUP_CONFIG, pos);
        store<u32>(ctx, 1, D_CONFIGS);
        result = DECODE_RECORD;
      } else if (tag == TAG_ROUND) {
        if (payloadLen != ROUND_PAYLOAD) return fail(ctx, ERR_LENGTH, pos);
        const rounds = load<u32>(ctx, D_ROUNDS);
        if (load<u32>(payload) != rounds || load<u32>(payload, 4) != 0) return fail(ctx, ERR_ROUND, pos);
        store<u32>(ctx, rounds + 1, D_ROUNDS);
        result = DECODE_RECORD;
      } else {
        if (payloadLen != END_PAYLOAD) return fail(ctx, ERR_LENGTH, pos);
        if (load<u64>(payload) != <u64>seq) return fail(ctx, ERR_END_COUNT, pos);
        if (load<u64>(payload, 8) != load<u64>(ctx, D_STREAMPOS) + <u64>pos) return fail(ctx, ERR_END_BYTES, pos);
        if (load<u64>(payload, 16) != load<u64>(ctx, D_DIGEST)) return fail(ctx, ERR_END_DIGEST, pos);
        store<u32>(ctx, load<u32>(ctx, D_MODE) | MODE_ENDED, D_MODE);
        result = DECODE_END;
      }
    } else {
      // A reader may skip an unknown record only if its writer marked it optional.
      if ((flags & FLAG_OPTIONAL) == 0) return fail(ctx, ERR_UNKNOWN_TAG, pos);
      store<u32>(ctx, load<u32>(ctx, D_REC_SKIPPED) + 1, D_REC_SKIPPED);
    }

    if (tag != TAG_END) store<u64>(ctx, chainDigest(load<u64>(ctx, D_DIGEST), checksum), D_DIGEST);
    store<u32>(ctx, seq + 1, D_SEQ);
    pos += size;
    if (result != -100) {
      describe(ctx, rec);
      store<u32>(ctx, 0, D_R_PACKED);
      if (tag == TAG_LZ4) {
        // Targets that apply records themselves get the decoded pages, as a PAGES record.
        store<u8>(ctx, TAG_PAGES, D_R_TAG);
        store<u32>(ctx, preBlock != 0 ? preBlock : load<u32>(ctx, D_LZ4_SCRATCH), D_R_PAYLOAD);
        store<u32>(ctx, load<u32>(payload), D_R_LEN);
        store<u32>(ctx, <u32>payloadLen, D_R_PACKED);
      }
      store<u32>(ctx, <u32>pos, D_POS);
      return result;
    }
  }
  return DECODE_NEED_MORE;
}

/**
 * Applies `count` entries of a DELTA record (already checked to lie inside its payload),
 * starting at `entries`, to consecutive pages at `pages` covering `covered` bytes. Returns the
 * entry bytes consumed (so a caller can apply a long record in batches), or -1 at the first
 * malformed entry (pages before it are already patched: callers apply into staging only).
 */
export function apply_delta_run(entries: usize, count: u32, pages: usize, shift: u32, covered: usize): i32 {
  let q: usize = 0;
  for (let i: u32 = 0; i < count; i++) {
    const dlen = <usize>load<u32>(entries + q);
    const pageOff = <usize>i << <usize>shift;
    const pageLen = min(<usize>1 << <usize>shift, covered - pageOff);
    if (xbzrle_decode(entries + q + 4, dlen, pages + pageOff, pageLen) < 0) return -1;
    q += 4 + dlen;
  }
  return <i32>q;
}

/**
 * Copy-on-write: before bytes [from, to) of a region's staging are written, every chunk they
 * touch that still lives only in the base is copied in, except chunks the write replaces whole
 * (`overwrite`: raw pages and zeros replace every byte; a delta reads the old page).
 */
function materialise(ctx: usize, entry: usize, from: u64, to: u64, overwrite: bool): void {
  const chunks = <usize>load<u32>(entry, R_CHUNKS);
  if (chunks == 0 || from >= to) return;
  const base = <usize>load<u32>(entry, R_BASE);
  const staging = <usize>load<u32>(entry, R_STAGING);
  const regionSize = load<u64>(entry, R_SIZE);
  const cs = <u64>load<u32>(ctx, D_CHUNK_SHIFT);
  const last = <u32>((to - 1) >> cs);
  let copied: u64 = 0;
  for (let c = <u32>(from >> cs); c <= last; c++) {
    const p = chunks + (c >> 3);
    const mask = <u8>1 << <u8>(c & 7);
    if ((load<u8>(p) & mask) != 0) continue;
    const start = <u64>c << cs;
    const end = min(start + (<u64>1 << cs), regionSize);
    if (!(overwrite && start >= from && end <= to)) {
      memory.copy(staging + <usize>start, base + <usize>start, <usize>(end - start));
      copied += end - start;
    }
    store<u8>(p, load<u8>(p) | mask);
  }
  if (copied != 0) store<u64>(ctx, load<u64>(ctx, D_COPIED) + copied, D_COPIED);
}

/** The first bit in [from, end) that is set (`set`) or clear (`!set`), or `end`; 64 at a time. */
function nextWith(map: usize, from: u32, end: u32, set: bool): u32 {
  let p = from;
  while (p < end) {
    if ((p & 63) == 0 && p + 64 <= end) {
      const word = load<u64>(map + (p >> 3));
      const hits = set ? word : ~word;
      if (hits == 0) {
        p += 64;
        continue;
      }
      return p + <u32>ctz<u64>(hits);
    }
    const bit = (load<u8>(map + (p >> 3)) >> <u8>(p & 7)) & 1;
    if ((bit != 0) == set) return p;
    p++;
  }
  return end;
}

/** How many bits of [first, first+count) are set (`set`) or clear (`!set`). */
function countWith(map: usize, first: u32, count: u32, set: bool): u32 {
  let n: u32 = 0;
  let p = first;
  const end = first + count;
  while (p < end) {
    if ((p & 63) == 0 && p + 64 <= end) {
      n += <u32>popcnt<u64>(load<u64>(map + (p >> 3)));
      p += 64;
      continue;
    }
    n += (load<u8>(map + (p >> 3)) >> <u8>(p & 7)) & 1;
    p++;
  }
  return set ? n : count - n;
}

function markHeld(have: usize, first: u32, count: u32): void {
  let page = first;
  const end = first + count;
  // Whole bytes in the middle, single bits at the edges.
  while (page < end && (page & 7) != 0) {
    store<u8>(have + (page >> 3), load<u8>(have + (page >> 3)) | (<u8>1 << <u8>(page & 7)));
    page++;
  }
  while (page + 8 <= end) {
    store<u8>(have + (page >> 3), 0xff);
    page += 8;
  }
  while (page < end) {
    store<u8>(have + (page >> 3), load<u8>(have + (page >> 3)) | (<u8>1 << <u8>(page & 7)));
    page++;
  }
}

/**
 * First page (as region << 32 | page) a full stream never delivered, or -1 when every page of
 * every region is held.
 */
export function first_missing(regions: usize, nRegions: u32): i64 {
  for (let r: u32 = 0; r < nRegions; r++) {
    const entry = regions + <usize>r * REGION_ENTRY;
    const have = <usize>load<u32>(entry, R_HAVE);
    const pages = load<u32>(entry, R_PAGES);
    const full = pages >> 3;
    for (let b: u32 = 0; b < full; b++) {
      const byte = load<u8>(have + b);
      if (byte != 0xff) return (<i64>r << 32) | <i64>((b << 3) + ctz<u32>(~(<u32>byte)));
    }
    for (let page = full << 3; page < pages; page++) {
      if ((load<u8>(have + (page >> 3)) & (<u8>1 << <u8>(page & 7))) == 0) return (<i64>r << 32) | <i64>page;
    }
  }
  return -1;
}
