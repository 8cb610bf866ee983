// Page scans over the Wasm core: dirty pages against a shadow copy, zero pages, and changed pages
// by per-page XXH3 hash. Each scan crosses into Wasm once per region (or once per 1 MiB window
// when an input has to be staged), never once per page.
//
// Zero copy: an argument that is a view into core memory (e.g. `CoreBuffer.bytes`) is read and
// written in place. Anything else is staged through the core's scratch block window by window,
// and outputs (bitmap, refreshed shadow pages, updated hashes) are copied back to the caller's
// arrays, so both kinds of argument give the same results. Keep device state in core memory to
// get the full speed of the kernels: staging costs a copy of every byte.
//
// Bitmap layout: one bit per page, page p is bit (p & 7) of byte (p >> 3), LSB first. A scan
// writes all bitmapBytes(pages) bytes (clearing unselected pages; the padding bits of the last byte
// are 0) and nothing past them.

import { MigrationError } from "./errors.js";
import { guarded, type Core } from "./instance.js";

/** Smallest page size accepted (one 64-byte v128 block per step in the kernels). */
export const MIN_PAGE_SIZE = 64;
/** Largest page size accepted. */
export const MAX_PAGE_SIZE = 1 << 20;

/**
 * Bytes of input staged per kernel call for arguments outside core memory. Big enough that the
 * call overhead is noise, small enough to keep the scratch block (two windows for scanDirty) small.
 */
const WINDOW = 1 << 20;

/** Result of a scan. */
export interface ScanResult {
  /** Number of pages whose bit is set. */
  count: number;
  /**
   * The bitmap: the caller's `options.bitmap` if given (or, if that lives in core memory and the
   * call grew memory, which detaches views, a fresh view of the same bytes), else a new array of
   * bitmapBytes(pages).
   */
  bitmap: Uint8Array;
}

/** Options shared by every scan. */
export interface ScanOptions {
  /**
   * Output bitmap to fill instead of allocating one; at least bitmapBytes(pages) long. Only the
   * first bitmapBytes(pages) bytes are written. May live in core memory (written in place).
   */
  bitmap?: Uint8Array | undefined;
}

/** Options of scanDirty. */
export interface ScanDirtyOptions extends ScanOptions {
  /** Copy each dirty page from `current` into `shadow`, ready for the next round (default false). */
  refresh?: boolean | undefined;
}

/**
 * Checks that `pageSize` is a power of two in 64..1 MiB.
 * @throws MigrationError `EINVAL` otherwise
 */
export function validatePageSize(pageSize: number): void {
  if (!Number.isInteger(pageSize) || pageSize < MIN_PAGE_SIZE || pageSize > MAX_PAGE_SIZE || (pageSize & (pageSize - 1)) !== 0) {
    throw new MigrationError("EINVAL", `page size must be a power of two in 64..1048576, got ${pageSize}`);
  }
}

/**
 * Number of pages covering `length` bytes; the last page may be partial.
 * @throws MigrationError `EINVAL` on a bad length or page size
 */
export function pageCount(length: number, pageSize: number): number {
  if (!Number.isSafeInteger(length) || length < 0) throw new MigrationError("EINVAL", `invalid length ${length}`);
  validatePageSize(pageSize);
  return Math.ceil(length / pageSize);
}

/**
 * Bytes of a bitmap with one bit per page.
 * @throws MigrationError `EINVAL` if `pages` is not a non-negative integer
 */
export function bitmapBytes(pages: number): number {
  if (!Number.isSafeInteger(pages) || pages < 0) throw new MigrationError("EINVAL", `invalid page count ${pages}`);
  return Math.ceil(pages / 8);
}

/**
 * Whether `page`'s bit is set in `bitmap` (pages past the end of the bitmap are not set).
 * @throws MigrationError `EINVAL` if `page` is not a non-negative integer
 */
export function isPageSet(bitmap: Uint8Array, page: number): boolean {
  if (!Number.isSafeInteger(page) || page < 0) throw new MigrationError("EINVAL", `invalid page index ${page}`);
  // Math.floor rather than `>>> 3`: page indexes may exceed 2^32 for huge (staged) regions.
  const byte = bitmap[Math.floor(page / 8)] ?? 0;
  return ((byte >>> (page % 8)) & 1) === 1;
}

/**
 * Marks the pages of `current` that differ from `shadow`.
 *
 * With `refresh`, every dirty page is copied from `current` into `shadow` (in place in core
 * memory, or copied back into the caller's array when `shadow` lives outside it); clean pages of
 * `shadow` are never written.
 *
 * @param current the region as it is now
 * @param shadow the region as it was last sent; same length as `current`
 * @param pageSize power of two in 64..1 MiB; the last page may be partial
 * @throws MigrationError `EINVAL` on a bad page size, a length mismatch or a short bitmap
 */
export function scanDirty(current: Uint8Array, shadow: Uint8Array, pageSize: number, options: ScanDirtyOptions = {}): ScanResult {
  checkBytes(current, "current");
  checkBytes(shadow, "shadow");
  validatePageSize(pageSize);
  if (current.length !== shadow.length) {
    throw new MigrationError("EINVAL", `current (${current.length} B) and shadow (${shadow.length} B) differ in length`);
  }
  const length = current.length;
  const pages = pageCount(length, pageSize);
  const bitmap = outputBitmap(options.bitmap, pages);
  const refresh = options.refresh === true;
  if (pages === 0) return { count: 0, bitmap };
  const mapLength = bitmap.length;

  return guarded((c) => {
    // Take the pointers before anything can grow memory: growth detaches the caller's views.
    const curPtr = corePtr(c, current);
    const shadowPtr = corePtr(c, shadow);
    const mapPtr = corePtr(c, bitmap);
    // Everything in place: one call over the whole region. Otherwise window by window.
    const step = curPtr >= 0 && shadowPtr >= 0 ? length : windowBytes(pageSize);
    const stepIn = Math.min(step, length);
    const curSize = curPtr >= 0 ? 0 : stepIn;
    const shadowSize = shadowPtr >= 0 ? 0 : stepIn;
    const mapSize = mapPtr >= 0 ? 0 : bitmapBytes(Math.ceil(stepIn / pageSize));
    const total = curSize + shadowSize + mapSize;
    // Scratch layout: [current window][shadow window][bitmap window].
    const scratch = total > 0 ? c.scratch(total) : 0;
    const k = c.exports;
    let count = 0;
    for (let off = 0; off < length; off += step) {
      const n = Math.min(step, length - off);
      // Windows are whole multiples of 8 pages, so each one starts on a bitmap byte.
      const mapOff = off / pageSize / 8;
      const windowPages = Math.ceil(n / pageSize);
      const cp = curPtr >= 0 ? curPtr + off : stage(c, current, off, n, scratch);
      const sp = shadowPtr >= 0 ? shadowPtr + off : stage(c, shadow, off, n, scratch + curSize);
      const mp = mapPtr >= 0 ? mapPtr + mapOff : scratch + curSize + shadowSize;
      // A staged shadow is thrown away after the window, so the kernel refreshes only a resident
      // one; the caller's array gets the dirty pages straight from `current` below.
      const dirty = k.scan_dirty(cp, sp, n, pageSize, mp, refresh && shadowPtr >= 0 ? 1 : 0) >>> 0;
      const u8 = c.u8;
      if (mapPtr < 0) bitmap.set(u8.subarray(mp, mp + bitmapBytes(windowPages)), mapOff);
      if (refresh && shadowPtr < 0 && dirty > 0) copyDirtyRuns(u8, mp, windowPages, pageSize, n, cp, shadow, off);
      count += dirty;
    }
    return { count, bitmap: liveView(c, bitmap, mapPtr, mapLength) };
  });
}

/**
 * Marks the pages of `data` that are all zero bytes.
 *
 * @param pageSize power of two in 64..1 MiB; the last page may be partial
 * @throws MigrationError `EINVAL` on a bad page size or a short bitmap
 */
export function scanZero(data: Uint8Array, pageSize: number, options: ScanOptions = {}): ScanResult {
  checkBytes(data, "data");
  validatePageSize(pageSize);
  const length = data.length;
  const pages = pageCount(length, pageSize);
  const bitmap = outputBitmap(options.bitmap, pages);
  if (pages === 0) return { count: 0, bitmap };
  const mapLength = bitmap.length;

  return guarded((c) => {
    const dataPtr = corePtr(c, data);
    const mapPtr = corePtr(c, bitmap);
    const step = dataPtr >= 0 ? length : windowBytes(pageSize);
    const stepIn = Math.min(step, length);
    const dataSize = dataPtr >= 0 ? 0 : stepIn;
    const mapSize = mapPtr >= 0 ? 0 : bitmapBytes(Math.ceil(stepIn / pageSize));
    const total = dataSize + mapSize;
    // Scratch layout: [data window][bitmap window].
    const scratch = total > 0 ? c.scratch(total) : 0;
    const k = c.exports;
    let count = 0;
    for (let off = 0; off < length; off += step) {
      const n = Math.min(step, length - off);
      const mapOff = off / pageSize / 8;
      const dp = dataPtr >= 0 ? dataPtr + off : stage(c, data, off, n, scratch);
      const mp = mapPtr >= 0 ? mapPtr + mapOff : scratch + dataSize;
      count += k.scan_zero(dp, n, pageSize, mp) >>> 0;
      if (mapPtr < 0) bitmap.set(c.u8.subarray(mp, mp + bitmapBytes(Math.ceil(n / pageSize))), mapOff);
    }
    return { count, bitmap: liveView(c, bitmap, mapPtr, mapLength) };
  });
}

/**
 * Per-page hash tracking: hashes every page of `data` with XXH3-64 (seed 0) and compares it with
 * the page's entry in `hashes` (8 little-endian bytes per page). Pages whose hash changed get their
 * bit set and their new hash stored in `hashes` (updated in place). Reads memory once and needs
 * 8 bytes per page instead of a full shadow copy, so it beats scanDirty on mostly clean memory.
 *
 * @param hashes at least 8 * pages bytes; may live in core memory (updated in place)
 * @param pageSize power of two in 64..1 MiB; the last page may be partial (hashed over its length)
 * @throws MigrationError `EINVAL` on a bad page size, short `hashes` or a short bitmap
 */
export function scanHash(data: Uint8Array, pageSize: number, hashes: Uint8Array, options: ScanOptions = {}): ScanResult {
  checkBytes(data, "data");
  checkBytes(hashes, "hashes");
  validatePageSize(pageSize);
  const length = data.length;
  const pages = pageCount(length, pageSize);
  if (hashes.length < pages * 8) {
    throw new MigrationError("EINVAL", `hashes holds ${hashes.length} B, ${pages} pages need ${pages * 8} B`);
  }
  const bitmap = outputBitmap(options.bitmap, pages);
  if (pages === 0) return { count: 0, bitmap };
  const mapLength = bitmap.length;

  return guarded((c) => {
    const dataPtr = corePtr(c, data);
    const hashPtr = corePtr(c, hashes);
    const mapPtr = corePtr(c, bitmap);
    const step = dataPtr >= 0 && hashPtr >= 0 ? length : windowBytes(pageSize);
    const stepIn = Math.min(step, length);
    const stepPages = Math.ceil(stepIn / pageSize);
    const dataSize = dataPtr >= 0 ? 0 : stepIn;
    const hashSize = hashPtr >= 0 ? 0 : stepPages * 8;
    const mapSize = mapPtr >= 0 ? 0 : bitmapBytes(stepPages);
    const total = dataSize + hashSize + mapSize;
    // Scratch layout: [data window][hashes window][bitmap window].
    const scratch = total > 0 ? c.scratch(total) : 0;
    const k = c.exports;
    let count = 0;
    for (let off = 0; off < length; off += step) {
      const n = Math.min(step, length - off);
      const firstPage = off / pageSize;
      const windowPages = Math.ceil(n / pageSize);
      const dp = dataPtr >= 0 ? dataPtr + off : stage(c, data, off, n, scratch);
      const hp = hashPtr >= 0 ? hashPtr + firstPage * 8 : stage(c, hashes, firstPage * 8, windowPages * 8, scratch + dataSize);
      const mp = mapPtr >= 0 ? mapPtr + firstPage / 8 : scratch + dataSize + hashSize;
      const changed = k.scan_hash(dp, n, pageSize, hp, mp) >>> 0;
      const u8 = c.u8;
      if (mapPtr < 0) bitmap.set(u8.subarray(mp, mp + bitmapBytes(windowPages)), firstPage / 8);
      // Only changed entries differ from the caller's; 8 B per page is cheap to copy back whole.
      if (hashPtr < 0 && changed > 0) hashes.set(u8.subarray(hp, hp + windowPages * 8), firstPage * 8);
      count += changed;
    }
    return { count, bitmap: liveView(c, bitmap, mapPtr, mapLength) };
  });
}

function checkBytes(value: unknown, name: string): asserts value is Uint8Array {
  if (!(value instanceof Uint8Array)) throw new MigrationError("EINVAL", `${name} must be a Uint8Array`);
}

/** The caller's bitmap after checking its size, or a new zeroed one. */
function outputBitmap(given: Uint8Array | undefined, pages: number): Uint8Array {
  const need = bitmapBytes(pages);
  if (given === undefined) return new Uint8Array(need);
  checkBytes(given, "bitmap");
  if (given.length < need) {
    throw new MigrationError("EINVAL", `bitmap holds ${given.length} B, ${pages} pages need ${need} B`);
  }
  return given;
}

/** Pointer of `data` in core memory, or -1 when it lives elsewhere and must be staged. */
function corePtr(c: Core, data: Uint8Array): number {
  return c.owns(data) ? data.byteOffset : -1;
}

/**
 * Input bytes per kernel call when staging: 1 MiB, or 8 pages for the biggest page sizes, so that
 * every window is a whole number of bitmap bytes (8 pages) and of pages.
 */
function windowBytes(pageSize: number): number {
  return Math.max(WINDOW, pageSize * 8);
}

/** Copies data[off, off+n) into core memory at `ptr` and returns `ptr`. */
function stage(c: Core, data: Uint8Array, off: number, n: number, ptr: number): number {
  c.u8.set(data.subarray(off, off + n), ptr);
  return ptr;
}

/**
 * Refreshes the caller's (non-resident) `shadow` for one window: copies the window's dirty pages
 * from `current` as it sits in core memory at `cp` into `shadow` at `off`, coalescing neighbouring
 * dirty pages into one copy. Only dirty pages are written; the caller's clean pages are untouched.
 */
function copyDirtyRuns(
  u8: Uint8Array,
  mapPtr: number,
  windowPages: number,
  pageSize: number,
  windowLength: number,
  cp: number,
  shadow: Uint8Array,
  off: number,
): void {
  let runStart = -1;
  for (let p = 0; p <= windowPages; p++) {
    // Skip 8 clean pages at once: one bitmap byte of zero.
    if (runStart < 0 && (p & 7) === 0 && p < windowPages && u8[mapPtr + (p >>> 3)] === 0) {
      p += 7;
      continue;
    }
    const dirty = p < windowPages && ((u8[mapPtr + (p >>> 3)]! >>> (p & 7)) & 1) === 1;
    if (dirty && runStart < 0) runStart = p;
    else if (!dirty && runStart >= 0) {
      const start = runStart * pageSize;
      const end = Math.min(p * pageSize, windowLength);
      shadow.set(u8.subarray(cp + start, cp + end), off + start);
      runStart = -1;
    }
  }
}

/**
 * The caller's bitmap, or, if it lives in core memory and memory grew during the call (growth
 * detaches old views), a fresh view of the same bytes. `length` is the bitmap's length taken
 * before the call (a detached view reports 0).
 */
function liveView(c: Core, bitmap: Uint8Array, mapPtr: number, length: number): Uint8Array {
  if (mapPtr < 0 || c.owns(bitmap)) return bitmap;
  return new Uint8Array(c.memory.buffer, mapPtr, length);
}
