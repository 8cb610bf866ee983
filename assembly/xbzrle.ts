// XBZRLE (QEMU migration/xbzrle.c) delta encoding of a page against its previous version.
//
// Wire grammar (QEMU docs/xbzrle.txt):
//   page  := (zrun nzrun)+        the final unchanged run is omitted
//   zrun  := length               bytes equal in both pages (0 only in the first pair)
//   nzrun := length byte{length}  bytes that differ, followed by their NEW values (not XOR)
//   length := ULEB128 "small", 0..0x3FFF: n < 0x80 -> 1 byte; else (n & 0x7f) | 0x80, n >> 7.
//
// xbzrle_encode returns the delta length (0 = pages identical, nothing written) or -1 when the
// delta would be longer than `limit` or needs a run longer than 0x3FFF (not representable).
// Unlike QEMU, which gives up as soon as fewer than 2 bytes of room are left (even if the rest
// of the page is unchanged), -1 here means exactly "the delta is longer than `limit`".
//
// xbzrle_decode validates the whole delta before writing anything, so on any error the page is
// untouched. It returns the end position of the last run (>= 0) or one of these statuses:
//   -1 DECODE_TRUNCATED     fewer than 2 bytes left where a zrun or nzrun starts, or the nzrun's
//                           data runs past the end of the delta
//   -2 DECODE_BAD_VARINT    the second byte of a length has bit 7 set (longer than 14 bits)
//   -3 DECODE_ZERO_RUN      an nzrun of length 0, or a zrun of length 0 after the first pair
//   -4 DECODE_OUT_OF_BOUNDS a zrun or nzrun ends past the end of the page
// Non-minimal 2-byte lengths (e.g. 0x85 0x00 for 5) are accepted, as QEMU's decoder does.
//
// Speed: the pages are compared 64 bytes at a time with i8x16.eq; a block where all bytes agree
// costs one all_true test. Otherwise the four i8x16.bitmask results form a 64-bit "equal" mask
// and every run boundary inside the block is found with ctz on that mask, with no reload. Short
// nzruns are copied with v128 stores: memory.copy for 1..16 bytes costs a call and halves the
// throughput on sparse pages.

const MAX_RUN: usize = 0x3fff;

const DECODE_TRUNCATED: i32 = -1;
const DECODE_BAD_VARINT: i32 = -2;
const DECODE_ZERO_RUN: i32 = -3;
const DECODE_OUT_OF_BOUNDS: i32 = -4;

const ALL: u64 = 0xffff_ffff_ffff_ffff;

/** Lanes 0..15, to build "lane < n" masks. */
const LANE_INDEX: v128 = i8x16(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);

// @ts-ignore: decorator
@inline
function eq16(a: usize, b: usize): v128 {
  return i8x16.eq(v128.load(a), v128.load(b));
}

/**
 * Equal-mask of the last `n` (< 64) bytes of the pages: bit k set when byte k agrees. Bits from
 * `n` up are set too, so an nzrun ends at the page end and the final zrun is never emitted.
 */
function tailMask(a: usize, b: usize, n: usize): u64 {
  let mask = ALL << <u64>n;
  let k: usize = 0;
  for (; k + 16 <= n; k += 16) mask |= <u64>i8x16.bitmask(eq16(a + k, b + k)) << <u64>k;
  for (; k < n; k++) {
    if (load<u8>(a + k) == load<u8>(b + k)) mask |= (<u64>1) << <u64>k;
  }
  return mask;
}

/**
 * First index >= i where the pages agree, or `len`, for an nzrun that outgrew its block. Stops
 * once the run is known to reach `end` (<= len): the caller then gives up, so a rewritten page
 * costs only as much scanning as the output limit allows.
 */
function skipDifferent(a: usize, b: usize, i: usize, end: usize, len: usize): usize {
  while (i < end && i + 16 <= len) {
    const m = i8x16.bitmask(eq16(a + i, b + i));
    if (m != 0) return i + <usize>ctz(m);
    i += 16;
  }
  while (i < end && load<u8>(a + i) != load<u8>(b + i)) i++;
  return i;
}

/** Writes `n` (<= 0x3FFF) as ULEB128 at `out`; returns 1 or 2. */
// @ts-ignore: decorator
@inline
function putLength(out: usize, n: usize): usize {
  if (n < 0x80) {
    store<u8>(out, <u8>n);
    return 1;
  }
  store<u16>(out, <u16>((n & 0x7f) | 0x80 | ((n >> 7) << 8)));
  return 2;
}

/**
 * Encodes `newPage` against `oldPage` (both `len` bytes) into `out`. Returns the delta length,
 * 0 when the pages are identical, or -1 when the delta would exceed `limit` bytes or needs a run
 * longer than 0x3FFF. `out` must have room for `limit + 32` bytes: short runs are copied with
 * 16-byte stores that may land up to 15 bytes past the delta's end.
 */
export function xbzrle_encode(oldPage: usize, newPage: usize, len: usize, out: usize, limit: usize): i32 {
  let d: usize = 0; // bytes of delta written
  let zrunStart: usize = 0; // where the current unchanged run began
  let pos: usize = 0; // start of the 64 bytes being examined
  while (pos < len) {
    let equal: u64;
    if (pos + 64 <= len) {
      const a = oldPage + pos;
      const b = newPage + pos;
      const e0 = eq16(a, b);
      const e1 = eq16(a + 16, b + 16);
      const e2 = eq16(a + 32, b + 32);
      const e3 = eq16(a + 48, b + 48);
      if (i8x16.all_true(v128.and(v128.and(e0, e1), v128.and(e2, e3)))) {
        pos += 64;
        continue;
      }
      equal =
        <u64>i8x16.bitmask(e0) |
        (<u64>i8x16.bitmask(e1) << 16) |
        (<u64>i8x16.bitmask(e2) << 32) |
        (<u64>i8x16.bitmask(e3) << 48);
    } else {
      equal = tailMask(oldPage + pos, newPage + pos, len - pos);
    }

    let next = pos + 64;
    let differ = ~equal;
    while (differ != 0) {
      const p = ctz(differ);
      const start = pos + <usize>p;
      const zrun = start - zrunStart;
      if (zrun > MAX_RUN) return -1;
      // The zrun is always followed by an nzrun: at least one length byte and one data byte.
      if (d + (zrun < 0x80 ? 1 : 2) + 2 > limit) return -1;
      d += putLength(out + d, zrun);

      // Longest nzrun that could still fit (its length takes at least one byte).
      let cap = limit - d - 1;
      if (cap > MAX_RUN) cap = MAX_RUN;
      const rest = equal & (ALL << p);
      let end: usize;
      if (rest != 0) {
        end = pos + <usize>ctz(rest);
      } else {
        // The nzrun runs into the next block: scan on, then look at the 64 bytes from its end
        // (blocks need not be aligned to anything; loads are unaligned anyway).
        end = skipDifferent(oldPage, newPage, next, len - start > cap ? start + cap + 1 : len, len);
        next = end;
      }
      const nzrun = end - start;
      if (nzrun > cap) return -1;
      if (nzrun >= 0x80 && d + 2 + nzrun > limit) return -1;
      d += putLength(out + d, nzrun);
      const src = newPage + start;
      const dst = out + d;
      if (nzrun <= 64 && len - start >= ((nzrun + 15) & ~15)) {
        for (let k: usize = 0; k < nzrun; k += 16) v128.store(dst + k, v128.load(src + k));
      } else {
        memory.copy(dst, src, nzrun);
      }
      d += nzrun;
      zrunStart = end;
      if (rest == 0) break;
      differ = ~equal & (ALL << <u64>(end - pos));
    }
    pos = next;
  }
  return <i32>d;
}

/**
 * Reads a length at `p` (2 bytes readable). Returns value | size << 16, or -1 for a 2-byte form
 * whose second byte has bit 7 set.
 */
// @ts-ignore: decorator
@inline
function readLength(p: usize): i32 {
  const lo = <i32>load<u8>(p);
  if (lo < 0x80) return lo | (1 << 16);
  const hi = <i32>load<u8>(p + 1);
  if (hi >= 0x80) return -1;
  return (lo & 0x7f) | (hi << 7) | (2 << 16);
}

/** Status of the delta's first error, or 0 when the whole delta is well formed for the page. */
export function validate(delta: usize, deltaLen: usize, pageLen: usize): i32 {
  let i: usize = 0;
  let d: usize = 0;
  while (i < deltaLen) {
    if (deltaLen - i < 2) return DECODE_TRUNCATED;
    const z = readLength(delta + i);
    if (z < 0) return DECODE_BAD_VARINT;
    const zrun = <usize>(z & 0xffff);
    if (zrun == 0 && i != 0) return DECODE_ZERO_RUN;
    if (zrun > pageLen - d) return DECODE_OUT_OF_BOUNDS;
    i += <usize>(z >>> 16);
    d += zrun;

    if (deltaLen - i < 2) return DECODE_TRUNCATED;
    const n = readLength(delta + i);
    if (n < 0) return DECODE_BAD_VARINT;
    const nzrun = <usize>(n & 0xffff);
    if (nzrun == 0) return DECODE_ZERO_RUN;
    if (nzrun > pageLen - d) return DECODE_OUT_OF_BOUNDS;
    i += <usize>(n >>> 16);
    if (nzrun > deltaLen - i) return DECODE_TRUNCATED;
    i += nzrun;
    d += nzrun;
  }
  return 0;
}

/**
 * Applies `delta` onto `page` (`pageLen` bytes) in place. Returns the end position of the last
 * run, or a negative status (see the top of this file) with the page unchanged.
 */
export function xbzrle_decode(delta: usize, deltaLen: usize, page: usize, pageLen: usize): i32 {
  const status = validate(delta, deltaLen, pageLen);
  if (status < 0) return status;
  // Everything below is in bounds: validate() walked exactly this path.
  let i: usize = 0;
  let d: usize = 0;
  while (i < deltaLen) {
    const z = readLength(delta + i);
    i += <usize>(z >>> 16);
    d += <usize>(z & 0xffff);
    const n = readLength(delta + i);
    i += <usize>(n >>> 16);
    const nzrun = <usize>(n & 0xffff);
    if (nzrun <= 16 && i + 16 <= deltaLen && d + 16 <= pageLen) {
      // Blend the run into the page: lanes >= nzrun keep the page's bytes (the next zrun).
      const take = i8x16.lt_u(LANE_INDEX, i8x16.splat(<i8>nzrun));
      v128.store(page + d, v128.bitselect(v128.load(delta + i), v128.load(page + d), take));
    } else {
      memory.copy(page + d, delta + i, nzrun);
    }
    i += nzrun;
    d += nzrun;
  }
  return <i32>d;
}
