// Pure-TS XBZRLE, written for clarity rather than speed: the test oracle for the Wasm kernels and
// the baseline of the benchmarks. It follows the grammar byte by byte, with no shared code with
// assembly/xbzrle.ts or src/core/xbzrle.ts, so that a bug in one of them shows up as a mismatch.
//
//   page := (zrun nzrun)+ ; zrun := length ; nzrun := length byte{length}
//   length := ULEB128 limited to 0..0x3FFF (1 byte below 0x80, else 2 bytes)
import { MigrationError } from "../errors.js";

const MAX_RUN = 0x3fff;

/**
 * XBZRLE delta that turns `oldPage` into `newPage`: an empty array when they are equal, null when
 * the delta would be longer than `limit` (default: the page length) or needs a run longer than
 * 0x3FFF bytes.
 */
export function xbzrleEncodeReference(oldPage: Uint8Array, newPage: Uint8Array, limit = newPage.length): Uint8Array | null {
  if (oldPage.length !== newPage.length) {
    throw new MigrationError("EINVAL", "xbzrle: pages differ in length");
  }
  const len = newPage.length;
  const out: number[] = [];
  const putLength = (n: number): void => {
    if (n < 0x80) out.push(n);
    else out.push((n & 0x7f) | 0x80, n >> 7);
  };
  let i = 0;
  for (;;) {
    // zrun: bytes that did not change.
    const zrunStart = i;
    while (i < len && oldPage[i] === newPage[i]) i++;
    if (i === len) break; // the trailing unchanged run is never written
    const zrun = i - zrunStart;
    // nzrun: bytes that changed.
    const nzrunStart = i;
    while (i < len && oldPage[i] !== newPage[i]) i++;
    const nzrun = i - nzrunStart;
    if (zrun > MAX_RUN || nzrun > MAX_RUN) return null;
    putLength(zrun);
    putLength(nzrun);
    for (let k = nzrunStart; k < i; k++) out.push(newPage[k]!);
    if (out.length > limit) return null;
  }
  return Uint8Array.from(out);
}

function malformed(offset: number, problem: string): MigrationError {
  return new MigrationError("EINVAL", `xbzrle: malformed delta at byte ${offset}: ${problem}`, { byteOffset: offset });
}

/**
 * Applies an XBZRLE delta onto `page` in place. A malformed delta throws MigrationError EINVAL
 * (message and `byteOffset` point at the length field at fault) and leaves `page` unchanged.
 */
export function xbzrleDecodeReference(delta: Uint8Array, page: Uint8Array): void {
  // First pass: parse and check everything, remembering what to copy.
  const copies: Array<{ from: number; to: number; count: number }> = [];
  let i = 0;
  let pos = 0;

  const readLength = (what: string): number => {
    const at = i;
    if (delta.length - i < 2) throw malformed(at, `truncated: ${what} needs at least 2 more bytes`);
    const first = delta[i]!;
    if (first < 0x80) {
      i += 1;
      return first;
    }
    const second = delta[i + 1]!;
    if (second >= 0x80) throw malformed(at, `bad varint: ${what} length is longer than 2 bytes`);
    i += 2;
    return (first & 0x7f) | (second << 7);
  };

  while (i < delta.length) {
    const zrunAt = i;
    const zrun = readLength("zrun");
    if (zrun === 0 && zrunAt !== 0) throw malformed(zrunAt, "zero-length zrun after the first pair");
    if (pos + zrun > page.length) throw malformed(zrunAt, "zrun goes out of page bounds");
    pos += zrun;

    const nzrunAt = i;
    const nzrun = readLength("nzrun");
    if (nzrun === 0) throw malformed(nzrunAt, "zero-length nzrun");
    if (pos + nzrun > page.length) throw malformed(nzrunAt, "nzrun goes out of page bounds");
    if (i + nzrun > delta.length) throw malformed(nzrunAt, "truncated: nzrun data runs past the end of the delta");
    copies.push({ from: i, to: pos, count: nzrun });
    i += nzrun;
    pos += nzrun;
  }

  // Second pass: only a fully valid delta touches the page.
  for (const { from, to, count } of copies) {
    for (let k = 0; k < count; k++) page[to + k] = delta[from + k]!;
  }
}
