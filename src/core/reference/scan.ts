// Pure-TS page scans, the specification the Wasm kernels (assembly/scan.ts) are tested against.
// Written for obviousness: one page at a time, byte by byte.
//
// Bitmap layout: one bit per page, page p is bit (p & 7) of byte (p >> 3); the bitmap is exactly
// ceil(pages / 8) bytes and padding bits are 0. The last page may be shorter than pageSize.

import { xxh3Reference } from "./xxh3.js";

/** Result of a reference scan: the bitmap and the number of bits set in it. */
export interface ScanReferenceResult {
  bitmap: Uint8Array;
  count: number;
}

function pagesOf(length: number, pageSize: number): number {
  return Math.ceil(length / pageSize);
}

function setBit(bitmap: Uint8Array, page: number): void {
  bitmap[page >>> 3] = bitmap[page >>> 3]! | (1 << (page & 7));
}

/**
 * Pages where `current` differs from `shadow`. With `refresh`, each dirty page is copied into
 * `shadow` (in place); clean pages of `shadow` are not written.
 */
export function scanDirtyReference(current: Uint8Array, shadow: Uint8Array, pageSize: number, refresh: boolean): ScanReferenceResult {
  if (current.length !== shadow.length) throw new RangeError("current and shadow differ in length");
  const pages = pagesOf(current.length, pageSize);
  const bitmap = new Uint8Array(Math.ceil(pages / 8));
  let count = 0;
  for (let p = 0; p < pages; p++) {
    const start = p * pageSize;
    const end = Math.min(start + pageSize, current.length);
    let dirty = false;
    for (let i = start; i < end; i++) {
      if (current[i] !== shadow[i]) {
        dirty = true;
        break;
      }
    }
    if (!dirty) continue;
    setBit(bitmap, p);
    count++;
    if (refresh) shadow.set(current.subarray(start, end), start);
  }
  return { bitmap, count };
}

/** Pages of `data` that are all zero bytes. */
export function scanZeroReference(data: Uint8Array, pageSize: number): ScanReferenceResult {
  const pages = pagesOf(data.length, pageSize);
  const bitmap = new Uint8Array(Math.ceil(pages / 8));
  let count = 0;
  for (let p = 0; p < pages; p++) {
    const start = p * pageSize;
    const end = Math.min(start + pageSize, data.length);
    let zero = true;
    for (let i = start; i < end; i++) {
      if (data[i] !== 0) {
        zero = false;
        break;
      }
    }
    if (!zero) continue;
    setBit(bitmap, p);
    count++;
  }
  return { bitmap, count };
}

/**
 * Per-page hash tracking: XXH3-64 (seed 0) of each page compared with `hashes[page]` (a
 * BigUint64Array, or a Uint8Array holding 8 little-endian bytes per page). Changed pages get
 * their bit set and their new hash stored in place.
 */
export function scanHashReference(data: Uint8Array, pageSize: number, hashes: BigUint64Array | Uint8Array): ScanReferenceResult {
  const pages = pagesOf(data.length, pageSize);
  const bitmap = new Uint8Array(Math.ceil(pages / 8));
  const bytes = hashes instanceof Uint8Array;
  const view = bytes ? new DataView(hashes.buffer, hashes.byteOffset, hashes.byteLength) : undefined;
  if ((bytes ? hashes.length / 8 : hashes.length) < pages) throw new RangeError("hashes too short");
  let count = 0;
  for (let p = 0; p < pages; p++) {
    const start = p * pageSize;
    const end = Math.min(start + pageSize, data.length);
    const h = xxh3Reference(data.subarray(start, end), 0n);
    const old = view ? view.getBigUint64(p * 8, true) : (hashes as BigUint64Array)[p]!;
    if (old === h) continue;
    if (view) view.setBigUint64(p * 8, h, true);
    else (hashes as BigUint64Array)[p] = h;
    setBit(bitmap, p);
    count++;
  }
  return { bitmap, count };
}
