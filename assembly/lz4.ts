// LZ4 block format (as the lz4 project specifies it): a greedy hash-table compressor in the
// manner of LZ4's fast level 1, and a decompressor that checks every length and offset against
// both buffers' ends. Both work on raw pointers; the TS side (src/core/lz4.ts) stages buffers
// and turns statuses into typed errors. src/core/reference/lz4.ts is the pure-TS twin and must
// produce the same bytes as lz4_compress.
//
// A block is a series of sequences: token (literal length << 4 | match length - 4, 15 meaning
// "more bytes follow, each adding 0-255"), literals, u16 LE offset (1-65535), match length
// extension. The last sequence holds literals only; the last 5 bytes are literals and the last
// match starts at least 12 bytes before the end.

const MIN_MATCH: usize = 4;
const LAST_LITERALS: usize = 5; // the last 5 bytes are always literals
const MF_LIMIT: usize = 12; // the last match starts at least 12 bytes before the end
const MAX_OFFSET: usize = 65535;
const HASH_LOG: u32 = 12;
/** Entries of the hash table (u32 positions): 16 KiB, like LZ4's default memory usage. */
export const LZ4_TABLE_ENTRIES: usize = <usize>1 << HASH_LOG;
/** After 2^SKIP_TRIGGER failed probes the search step grows by one (LZ4's acceleration). */
const SKIP_TRIGGER: u32 = 6;
/** After the first incompressibility check, one more every this many input bytes. */
const BAIL_STRIDE: usize = 4096;

export const LZ4_OUTPUT_FULL: i32 = -1;
export const LZ4_INCOMPRESSIBLE: i32 = -2;

// Decoder statuses (negative), explained by src/core/lz4.ts.
export const LZ4_ERR_TRUNCATED: i32 = -1; // the block ends inside a sequence
export const LZ4_ERR_OFFSET_ZERO: i32 = -2;
export const LZ4_ERR_OFFSET_BEFORE: i32 = -3; // the match starts before the output's start
export const LZ4_ERR_LITERALS_INPUT: i32 = -4; // literals run past the block's end
export const LZ4_ERR_LITERALS_OUTPUT: i32 = -5; // literals run past the declared size
export const LZ4_ERR_MATCH_OUTPUT: i32 = -6; // a match runs past the declared size
export const LZ4_ERR_SHORT: i32 = -7; // the block decodes to fewer bytes than declared

/** Input offset of the element at fault in the last failed lz4_decompress. */
let errorOffset: u32 = 0;

export function lz4_error_offset(): u32 {
  return errorOffset;
}

export function lz4_table_size(): u32 {
  return <u32>(LZ4_TABLE_ENTRIES * 4);
}

/** Largest block `len` input bytes can compress to (all literals). */
export function lz4_bound(len: u32): u32 {
  return len + len / 255 + 16;
}

/** Byte offset in the table for the 5 bytes at p (4 as a u32, then the fifth). */
@inline
function hash5(p: usize): usize {
  return <usize>((load<u32>(p) * 2654435761 + <u32>load<u8>(p, 4) * 0x85ebca77) >> (32 - HASH_LOG)) << 2;
}

/** Length of the common prefix of [a, ...) and [b, ...), stopping at `limit` (a's end). */
@inline
function commonLength(a: usize, b: usize, limit: usize): usize {
  const start = a;
  while (a + 16 <= limit) {
    const eq = i8x16.bitmask(i8x16.eq(v128.load(a), v128.load(b)));
    if (eq != 0xffff) return a - start + <usize>ctz<u32>(~eq);
    a += 16;
    b += 16;
  }
  while (a + 8 <= limit) {
    const diff = load<u64>(a) ^ load<u64>(b);
    if (diff != 0) return a - start + <usize>(ctz<u64>(diff) >> 3);
    a += 8;
    b += 8;
  }
  while (a < limit && load<u8>(a) == load<u8>(b)) {
    a++;
    b++;
  }
  return a - start;
}

/** Bytes a length (literals, or match - 4) takes after its 4-bit token field. */
@inline
function extraBytes(n: usize): usize {
  return n < 15 ? 0 : (n - 15) / 255 + 1;
}

/** Writes the 255-continuation bytes of a length whose 4-bit field was 15. */
@inline
function writeLength(op: usize, n: usize): usize {
  while (n >= 255) {
    store<u8>(op, 255);
    op++;
    n -= 255;
  }
  store<u8>(op, <u8>n);
  return op + 1;
}

/**
 * Compresses [src, src+len) into dst (capacity cap), using `table` (lz4_table_size() bytes,
 * contents ignored) as the hash table. Returns the block's length, LZ4_OUTPUT_FULL when it does
 * not fit in cap (exactly: iff the whole block would be longer), or, when `bailAfter` is not 0,
 * LZ4_INCOMPRESSIBLE as soon as at a checkpoint (input position `bailAfter`, then every 4 KiB)
 * the block so far would not be at least 1/32 smaller than the input so far.
 */
export function lz4_compress(src: usize, len: usize, dst: usize, cap: usize, table: usize, bailAfter: u32): i32 {
  const bail = bailAfter != 0;
  memory.fill(table, 0, LZ4_TABLE_ENTRIES * 4);
  let op = dst;
  const oend = dst + cap;
  let anchor: usize = 0; // positions are relative to src
  if (len >= MF_LIMIT + 1) {
    const mflimit = len - MF_LIMIT; // last position a match may start at
    const matchlimit = len - LAST_LITERALS; // a match ends at or before this
    let ip: usize = 1;
    let checkAt = <usize>bailAfter;
    // Position 0 is in the table already (every entry starts as 0).
    let ref: usize = 0;
    let searching = true;
    while (true) {
      if (searching) {
        // Search for a match, stepping faster the longer nothing is found.
        let probes: u32 = 1 << SKIP_TRIGGER;
        let forward = ip;
        let found = false;
        while (true) {
          ip = forward;
          forward = ip + <usize>(probes >> SKIP_TRIGGER);
          probes++;
          if (ip > mflimit) break;
          if (bail && ip >= checkAt) {
            // Pending literals cost at least their bytes; no saving yet means give up.
            if ((op - dst) + (ip - anchor) > ip - (ip >> 5)) return LZ4_INCOMPRESSIBLE;
            checkAt = ip + BAIL_STRIDE;
          }
          const seq = load<u32>(src + ip);
          const h = table + hash5(src + ip);
          ref = <usize>load<u32>(h);
          store<u32>(h, <u32>ip);
          if (ip - ref <= MAX_OFFSET && load<u32>(src + ref) == seq) {
            found = true;
            break;
          }
        }
        if (!found) break;
        // Extend backwards over equal bytes not yet emitted.
        while (ip > anchor && ref > 0 && load<u8>(src + ip - 1) == load<u8>(src + ref - 1)) {
          ip--;
          ref--;
        }
      }
      // One sequence: literals [anchor, ip), then the match at ip.
      const litLen = ip - anchor;
      const matchLen = MIN_MATCH + commonLength(src + ip + MIN_MATCH, src + ref + MIN_MATCH, src + matchlimit);
      // token + literal length bytes + literals + offset + match length bytes, exactly
      if (op + 3 + litLen + extraBytes(litLen) + extraBytes(matchLen - MIN_MATCH) > oend) return LZ4_OUTPUT_FULL;
      const token = op++;
      let t: u8;
      if (litLen >= 15) {
        t = 15 << 4;
        op = writeLength(op, litLen - 15);
      } else {
        t = <u8>(litLen << 4);
      }
      if (litLen <= 16 && anchor + 16 <= len && oend - op >= 16) {
        // Short literals: one 16-byte copy (the bytes past them are overwritten next, and
        // stay inside the output's capacity).
        v128.store(op, v128.load(src + anchor));
      } else {
        memory.copy(op, src + anchor, litLen);
      }
      op += litLen;
      store<u16>(op, <u16>(ip - ref));
      op += 2;
      const m = matchLen - MIN_MATCH;
      if (m >= 15) {
        t |= 15;
        op = writeLength(op, m - 15);
      } else {
        t |= <u8>m;
      }
      store<u8>(token, t);
      ip += matchLen;
      anchor = ip;
      if (ip > mflimit) break;
      // Fill the table at ip - 2, then try a match right at ip (common in runs).
      store<u32>(table + hash5(src + ip - 2), <u32>(ip - 2));
      const seq = load<u32>(src + ip);
      const h = table + hash5(src + ip);
      ref = <usize>load<u32>(h);
      store<u32>(h, <u32>ip);
      if (ip - ref <= MAX_OFFSET && load<u32>(src + ref) == seq) {
        searching = false;
      } else {
        ip++;
        searching = true;
      }
    }
  }
  // Last literals.
  const litLen = len - anchor;
  if (op + 1 + litLen + extraBytes(litLen) > oend) return LZ4_OUTPUT_FULL;
  if (litLen >= 15) {
    store<u8>(op++, 15 << 4);
    op = writeLength(op, litLen - 15);
  } else {
    store<u8>(op++, <u8>(litLen << 4));
  }
  memory.copy(op, src + anchor, litLen);
  op += litLen;
  return <i32>(op - dst);
}

@inline
function failAt(code: i32, at: usize): i32 {
  errorOffset = <u32>at;
  return code;
}

/**
 * Decodes the block [src, src+srcLen) into exactly dstLen bytes at dst. Returns dstLen, or a
 * negative LZ4_ERR_* with lz4_error_offset() set to the block offset of the element at fault.
 * Never reads outside the block nor writes outside [dst, dst+dstLen); on error the output holds
 * a partial decoding (callers decode into staging).
 */
export function lz4_decompress(src: usize, srcLen: usize, dst: usize, dstLen: usize): i32 {
  const iend = src + srcLen;
  const oend = dst + dstLen;
  let ip = src;
  let op = dst;
  while (true) {
    const seqStart = ip;
    if (ip >= iend) return failAt(LZ4_ERR_TRUNCATED, ip - src);
    const token = <usize>load<u8>(ip++);
    let lit = token >> 4;
    if (lit == 15) {
      let b: usize;
      do {
        if (ip >= iend) return failAt(LZ4_ERR_TRUNCATED, seqStart - src);
        b = <usize>load<u8>(ip++);
        lit += b;
        // A length past the input cannot be valid; stopping here also bounds the sum.
        if (lit > srcLen) return failAt(LZ4_ERR_LITERALS_INPUT, seqStart - src);
      } while (b == 255);
    }
    if (lit > iend - ip) return failAt(LZ4_ERR_LITERALS_INPUT, seqStart - src);
    if (lit > oend - op) return failAt(LZ4_ERR_LITERALS_OUTPUT, seqStart - src);
    if (lit <= 16 && iend - ip >= 16 && oend - op >= 16) {
      v128.store(op, v128.load(ip));
    } else {
      memory.copy(op, ip, lit);
    }
    ip += lit;
    op += lit;
    if (ip == iend) break; // the last sequence: literals only
    if (iend - ip < 2) return failAt(LZ4_ERR_TRUNCATED, ip - src);
    const offset = <usize>load<u16>(ip);
    if (offset == 0) return failAt(LZ4_ERR_OFFSET_ZERO, ip - src);
    if (offset > op - dst) return failAt(LZ4_ERR_OFFSET_BEFORE, ip - src);
    ip += 2;
    let ml = token & 15;
    if (ml == 15) {
      let b: usize;
      do {
        if (ip >= iend) return failAt(LZ4_ERR_TRUNCATED, seqStart - src);
        b = <usize>load<u8>(ip++);
        ml += b;
        if (ml > dstLen) return failAt(LZ4_ERR_MATCH_OUTPUT, seqStart - src);
      } while (b == 255);
    }
    ml += MIN_MATCH;
    if (ml > oend - op) return failAt(LZ4_ERR_MATCH_OUTPUT, seqStart - src);
    const ref = op - offset;
    if (offset >= 16 && oend - op >= ml + 16) {
      // 16 bytes at a time: each load reads bytes already written (offset >= 16), and the
      // overshoot (< 16 bytes) stays inside the output and is overwritten later.
      let i: usize = 0;
      do {
        v128.store(op + i, v128.load(ref + i));
        i += 16;
      } while (i < ml);
    } else if (offset >= ml) {
      memory.copy(op, ref, ml);
    } else if (offset == 1) {
      memory.fill(op, load<u8>(ref), ml);
    } else {
      // An overlapping run: the period [ref, op) repeats; copy it in doubling chunks.
      let done: usize = 0;
      let chunk = offset;
      while (done < ml) {
        const n = min(chunk, ml - done);
        memory.copy(op + done, ref, n);
        done += n;
        chunk = offset + done;
      }
    }
    op += ml;
  }
  if (op != oend) return failAt(LZ4_ERR_SHORT, srcLen);
  return <i32>dstLen;
}
