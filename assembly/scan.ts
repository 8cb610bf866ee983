// Page scans over a region: dirty pages (against a shadow copy), zero pages, and changed pages by
// per-page hash. Each scan is one call over a whole region (one JS->Wasm crossing per batch, not
// per page) and writes a bitmap with one bit per page.
//
// Bitmap layout (shared with src/core/scan.ts): page p is bit (p & 7) of byte (p >> 3), LSB
// first. The kernels write all ceil(pages / 8) bytes: bits of pages that are not selected are
// cleared and the padding bits of the last byte are 0, so the caller never has to zero the
// bitmap first.
//
// The page size is a power of two in 64..1 MiB (validated on the TS side), so every full page is
// one 64-byte block or a whole number of 128-byte blocks; only the last page may be partial (any
// length >= 1), and only it reaches the 16-byte and byte-wise tail code.
//
// Why v128 with one test per 128 bytes: at 64 MiB these scans are bound by DRAM reads. XOR/OR
// folding eight vectors and testing once with v128.any_true keeps the instruction count per byte
// far below what the memory system delivers (128-byte blocks measured 5-10 % faster than 64 on
// the zero scan), while the per-page early exit makes a dirty or non-zero page cost only the bytes
// up to its first difference (plus at most one block).
//
// Nothing here allocates or traps for in-bounds arguments; a zero page size (impossible through
// the TS wrappers) returns 0 instead of dividing by zero.

import { xxh3_64 } from "./xxh3";

/** True if [a, a+n) and [b, b+n) differ. Any n (the last page of a region may be short). */
// @ts-ignore: decorator
@inline
function rangeDiffers(a: usize, b: usize, n: usize): bool {
  let i: usize = 0;
  const n128 = n & ~(<usize>127);
  while (i < n128) {
    const x0 = v128.xor(v128.load(a + i), v128.load(b + i));
    const x1 = v128.xor(v128.load(a + i, 16), v128.load(b + i, 16));
    const x2 = v128.xor(v128.load(a + i, 32), v128.load(b + i, 32));
    const x3 = v128.xor(v128.load(a + i, 48), v128.load(b + i, 48));
    const x4 = v128.xor(v128.load(a + i, 64), v128.load(b + i, 64));
    const x5 = v128.xor(v128.load(a + i, 80), v128.load(b + i, 80));
    const x6 = v128.xor(v128.load(a + i, 96), v128.load(b + i, 96));
    const x7 = v128.xor(v128.load(a + i, 112), v128.load(b + i, 112));
    const x = v128.or(v128.or(v128.or(x0, x1), v128.or(x2, x3)), v128.or(v128.or(x4, x5), v128.or(x6, x7)));
    if (v128.any_true(x)) return true;
    i += 128;
  }
  if (i == n) return false;
  // 64-byte pages, and the odd 64-byte block of a partial last page.
  if (n - i >= 64) {
    const x0 = v128.xor(v128.load(a + i), v128.load(b + i));
    const x1 = v128.xor(v128.load(a + i, 16), v128.load(b + i, 16));
    const x2 = v128.xor(v128.load(a + i, 32), v128.load(b + i, 32));
    const x3 = v128.xor(v128.load(a + i, 48), v128.load(b + i, 48));
    if (v128.any_true(v128.or(v128.or(x0, x1), v128.or(x2, x3)))) return true;
    i += 64;
    if (i == n) return false;
  }
  return tailDiffers(a, b, i, n);
}

/** The < 64-byte tail of rangeDiffers (partial last page only), out of line. */
function tailDiffers(a: usize, b: usize, start: usize, n: usize): bool {
  let i = start;
  if (n >= 16) {
    while (n - i >= 16) {
      if (v128.any_true(v128.xor(v128.load(a + i), v128.load(b + i)))) return true;
      i += 16;
    }
    // The last partial vector: compare the final 16 bytes again (overlap is harmless).
    if (i != n) return v128.any_true(v128.xor(v128.load(a + n - 16), v128.load(b + n - 16)));
    return false;
  }
  while (i < n) {
    if (load<u8>(a + i) != load<u8>(b + i)) return true;
    i++;
  }
  return false;
}

/** True if [a, a+n) is all zero bytes. Any n. */
// @ts-ignore: decorator
@inline
function rangeIsZero(a: usize, n: usize): bool {
  let i: usize = 0;
  const n128 = n & ~(<usize>127);
  while (i < n128) {
    const x = v128.or(
      v128.or(v128.or(v128.load(a + i), v128.load(a + i, 16)), v128.or(v128.load(a + i, 32), v128.load(a + i, 48))),
      v128.or(v128.or(v128.load(a + i, 64), v128.load(a + i, 80)), v128.or(v128.load(a + i, 96), v128.load(a + i, 112))),
    );
    if (v128.any_true(x)) return false;
    i += 128;
  }
  if (i == n) return true;
  if (n - i >= 64) {
    const x = v128.or(
      v128.or(v128.load(a + i), v128.load(a + i, 16)),
      v128.or(v128.load(a + i, 32), v128.load(a + i, 48)),
    );
    if (v128.any_true(x)) return false;
    i += 64;
    if (i == n) return true;
  }
  return tailIsZero(a, i, n);
}

/** The < 64-byte tail of rangeIsZero (partial last page only), out of line. */
function tailIsZero(a: usize, start: usize, n: usize): bool {
  let i = start;
  if (n >= 16) {
    while (n - i >= 16) {
      if (v128.any_true(v128.load(a + i))) return false;
      i += 16;
    }
    // The last partial vector: test the final 16 bytes again (overlap is harmless).
    if (i != n) return !v128.any_true(v128.load(a + n - 16));
    return true;
  }
  while (i < n) {
    if (load<u8>(a + i) != 0) return false;
    i++;
  }
  return true;
}

/**
 * Marks the pages of `cur` that differ from `shadow` (both `len` bytes) in `bitmap` and returns how
 * many there are. With `refresh`, each dirty page is copied from `cur` into `shadow`, so the shadow
 * is ready for the next round without a second pass.
 */
export function scan_dirty(cur: usize, shadow: usize, len: usize, pageSize: u32, bitmap: usize, refresh: bool): u32 {
  if (pageSize == 0) return 0;
  const ps = <usize>pageSize;
  const full = len / ps;
  const rest = len - full * ps;
  let count: u32 = 0;
  let bits: u32 = 0;
  let off: usize = 0;
  let p: usize = 0;
  for (; p < full; p++) {
    if (rangeDiffers(cur + off, shadow + off, ps)) {
      bits |= 1 << <u32>(p & 7);
      count++;
      if (refresh) memory.copy(shadow + off, cur + off, ps);
    }
    if ((p & 7) == 7) {
      store<u8>(bitmap + (p >> 3), <u8>bits);
      bits = 0;
    }
    off += ps;
  }
  if (rest != 0) {
    if (rangeDiffers(cur + off, shadow + off, rest)) {
      bits |= 1 << <u32>(p & 7);
      count++;
      if (refresh) memory.copy(shadow + off, cur + off, rest);
    }
    // The partial page may be the one that completes a byte, so flush exactly as above.
    if ((p & 7) == 7) {
      store<u8>(bitmap + (p >> 3), <u8>bits);
      bits = 0;
    }
    p++;
  }
  // Flush the last, partially filled bitmap byte (its padding bits are still 0).
  if ((p & 7) != 0) store<u8>(bitmap + (p >> 3), <u8>bits);
  return count;
}

/** Marks the all-zero pages of [ptr, ptr+len) in `bitmap` and returns how many there are. */
export function scan_zero(ptr: usize, len: usize, pageSize: u32, bitmap: usize): u32 {
  if (pageSize == 0) return 0;
  const ps = <usize>pageSize;
  const full = len / ps;
  const rest = len - full * ps;
  let count: u32 = 0;
  let bits: u32 = 0;
  let off: usize = 0;
  let p: usize = 0;
  for (; p < full; p++) {
    if (rangeIsZero(ptr + off, ps)) {
      bits |= 1 << <u32>(p & 7);
      count++;
    }
    if ((p & 7) == 7) {
      store<u8>(bitmap + (p >> 3), <u8>bits);
      bits = 0;
    }
    off += ps;
  }
  if (rest != 0) {
    if (rangeIsZero(ptr + off, rest)) {
      bits |= 1 << <u32>(p & 7);
      count++;
    }
    if ((p & 7) == 7) {
      store<u8>(bitmap + (p >> 3), <u8>bits);
      bits = 0;
    }
    p++;
  }
  if ((p & 7) != 0) store<u8>(bitmap + (p >> 3), <u8>bits);
  return count;
}

/**
 * Per-page hash tracking: hashes each page of [ptr, ptr+len) with XXH3-64 (seed 0) and compares it
 * with the little-endian u64 at `hashes + 8 * page`. Where they differ, the page's bit is set and
 * the new hash is stored. Returns the number of changed pages. This reads the memory once (no
 * shadow copy), which beats the shadow compare on mostly clean memory.
 */
export function scan_hash(ptr: usize, len: usize, pageSize: u32, hashes: usize, bitmap: usize): u32 {
  if (pageSize == 0) return 0;
  const ps = <usize>pageSize;
  const full = len / ps;
  const rest = len - full * ps;
  const pages = full + <usize>(rest != 0);
  let count: u32 = 0;
  let bits: u32 = 0;
  let off: usize = 0;
  let p: usize = 0;
  for (; p < pages; p++) {
    const n = p < full ? ps : rest;
    const h = xxh3_64(ptr + off, n, 0);
    const slot = hashes + (p << 3);
    if (load<u64>(slot) != h) {
      store<u64>(slot, h);
      bits |= 1 << <u32>(p & 7);
      count++;
    }
    if ((p & 7) == 7) {
      store<u8>(bitmap + (p >> 3), <u8>bits);
      bits = 0;
    }
    off += ps;
  }
  if ((p & 7) != 0) store<u8>(bitmap + (p >> 3), <u8>bits);
  return count;
}
