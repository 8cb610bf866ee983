// XBZRLE page deltas (QEMU's RAM_SAVE_FLAG_XBZRLE payload), computed by the Wasm core.
//
// Both functions take plain Uint8Arrays. Arrays that already live in core memory (CoreBuffer
// bytes, or views of them) are read and written in place; others are staged through the core's
// scratch block, which costs a copy of each page.
import { MigrationError } from "./errors.js";
import { guarded } from "./instance.js";

/** The Wasm decoder's statuses (assembly/xbzrle.ts), as text for error messages. */
const DECODE_PROBLEMS: Readonly<Record<number, string>> = {
  [-1]: "truncated (a length or the nzrun's data runs past the end of the delta)",
  [-2]: "bad varint (a length longer than 2 bytes)",
  [-3]: "zero-length run (an empty nzrun, or an empty zrun after the first pair)",
  [-4]: "run out of page bounds",
};

/**
 * Largest page handled: decoded positions and delta lengths travel as i32 through the Wasm ABI.
 * (Wasm memory ends at 4 GiB anyway, and a page this large would be staged twice.)
 */
const MAX_PAGE = 0x3fff_ffff;

/** Cache-line alignment for staged inputs, so each page starts where v128 loads like it. */
function alignUp(value: number): number {
  return Math.ceil(value / 64) * 64;
}

/**
 * XBZRLE delta that turns `oldPage` into `newPage` (equal lengths), in QEMU's wire format.
 *
 * @param limit - longest acceptable delta in bytes; defaults to the page length, the point where
 *   sending the raw page is no worse.
 * @returns an empty array when the pages are identical (QEMU sends nothing), `null` when the
 *   delta would be longer than `limit` or needs a run longer than 0x3FFF bytes (send the raw page
 *   instead), otherwise a fresh array owned by the caller.
 * @throws MigrationError EINVAL for pages of different lengths or a limit that is not a
 *   non-negative integer.
 */
export function xbzrleEncode(oldPage: Uint8Array, newPage: Uint8Array, limit?: number): Uint8Array | null {
  if (!(oldPage instanceof Uint8Array) || !(newPage instanceof Uint8Array)) {
    throw new MigrationError("EINVAL", "xbzrle: pages must be Uint8Arrays");
  }
  if (oldPage.length !== newPage.length) {
    throw new MigrationError("EINVAL", `xbzrle: pages differ in length (${oldPage.length} vs ${newPage.length})`);
  }
  const len = newPage.length;
  const max = limit ?? len;
  if (!Number.isSafeInteger(max) || max < 0) {
    throw new MigrationError("EINVAL", `xbzrle: limit must be a non-negative integer, got ${max}`);
  }
  if (len > MAX_PAGE) throw new MigrationError("EINVAL", `xbzrle: page of ${len} bytes is too large`);
  // No delta is longer than 2 * len + 1 (a length byte costs at most what its zrun covers, an
  // nzrun at most twice its bytes, plus one for an empty first zrun), so a larger limit changes
  // nothing; capping it keeps the output area small.
  const cap = Math.min(max, 2 * len + 1);

  return guarded((c) => {
    // Read the pointers of core-resident pages before scratch(): growing memory detaches views.
    const oldIn = c.owns(oldPage) ? oldPage.byteOffset : -1;
    const newIn = c.owns(newPage) ? newPage.byteOffset : -1;
    const staged = alignUp(len);
    const oldAt = 0;
    const newAt = oldAt + (oldIn < 0 ? staged : 0);
    const outAt = newAt + (newIn < 0 ? staged : 0);
    // 32 spare bytes: the kernel copies short runs with a 16-byte store past the delta's end.
    const base = c.scratch(outAt + cap + 32);
    const u8 = c.u8;
    const oldPtr = oldIn >= 0 ? oldIn : base + oldAt;
    const newPtr = newIn >= 0 ? newIn : base + newAt;
    if (oldIn < 0) u8.set(oldPage, oldPtr);
    if (newIn < 0) u8.set(newPage, newPtr);

    const n = c.exports.xbzrle_encode(oldPtr, newPtr, len, base + outAt, cap);
    if (n < 0) return null;
    // `u8` is still current: kernels never grow memory. (new + set is cheaper than slice(),
    // which goes through the species constructor; this runs once per page.)
    const delta = new Uint8Array(n);
    delta.set(u8.subarray(base + outAt, base + outAt + n));
    return delta;
  });
}

/**
 * Applies an XBZRLE delta onto `page` in place (the page must hold the old contents).
 *
 * The whole delta is validated before the page is written, so a malformed one leaves `page`
 * unchanged. An empty delta is valid and changes nothing.
 *
 * @throws MigrationError EINVAL when the delta is malformed or does not fit the page; the message
 *   names the problem and `byteOffset` is the offset in `delta` of the length field at fault.
 */
export function xbzrleDecode(delta: Uint8Array, page: Uint8Array): void {
  if (!(delta instanceof Uint8Array) || !(page instanceof Uint8Array)) {
    throw new MigrationError("EINVAL", "xbzrle: delta and page must be Uint8Arrays");
  }
  const pageLen = page.length;
  if (pageLen > MAX_PAGE) throw new MigrationError("EINVAL", `xbzrle: page of ${pageLen} bytes is too large`);
  // The empty delta (pages were identical) is valid and changes nothing: skip staging the page.
  if (delta.length === 0) return;

  const status = guarded((c) => {
    const deltaIn = c.owns(delta) ? delta.byteOffset : -1;
    const pageIn = c.owns(page) ? page.byteOffset : -1;
    const deltaAt = 0;
    const pageAt = deltaIn < 0 ? alignUp(delta.length) : 0;
    const base = c.scratch(pageAt + (pageIn < 0 ? pageLen : 0));
    const u8 = c.u8;
    const deltaPtr = deltaIn >= 0 ? deltaIn : base + deltaAt;
    const pagePtr = pageIn >= 0 ? pageIn : base + pageAt;
    if (deltaIn < 0) u8.set(delta, deltaPtr);
    if (pageIn < 0) u8.set(page, pagePtr);

    const result = c.exports.xbzrle_decode(deltaPtr, delta.length, pagePtr, pageLen);
    // A staged page is copied back only on success, so errors leave the caller's page alone.
    if (result >= 0 && pageIn < 0) page.set(u8.subarray(pagePtr, pagePtr + pageLen));
    return result;
  });
  if (status >= 0) return;

  const offset = faultOffset(delta, pageLen);
  const problem = DECODE_PROBLEMS[status] ?? `status ${status}`;
  throw new MigrationError("EINVAL", `xbzrle: malformed delta at byte ${offset}: ${problem}`, { byteOffset: offset });
}

/**
 * Offset of the length field where a delta first breaks the grammar. The kernel reports only
 * what went wrong, so the (cold) error path walks the delta again to say where.
 */
function faultOffset(delta: Uint8Array, pageLen: number): number {
  let i = 0;
  let pos = 0;
  // Reads the length at `i`; returns -1 when it is incomplete or malformed.
  const read = (): number => {
    if (delta.length - i < 2) return -1;
    const first = delta[i]!;
    if (first < 0x80) {
      i += 1;
      return first;
    }
    const second = delta[i + 1]!;
    if (second >= 0x80) return -1;
    i += 2;
    return (first & 0x7f) | (second << 7);
  };
  while (i < delta.length) {
    const zrunAt = i;
    const zrun = read();
    if (zrun < 0 || (zrun === 0 && zrunAt !== 0) || zrun > pageLen - pos) return zrunAt;
    pos += zrun;
    const nzrunAt = i;
    const nzrun = read();
    if (nzrun < 1 || nzrun > pageLen - pos || nzrun > delta.length - i) return nzrunAt;
    i += nzrun;
    pos += nzrun;
  }
  return delta.length;
}
