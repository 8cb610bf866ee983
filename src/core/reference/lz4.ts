// Pure-TS LZ4 block codec, written for clarity rather than speed: the test oracle for
// assembly/lz4.ts and the baseline of the benchmarks. The compressor follows the same greedy
// algorithm (5-byte hash into 4096 positions, LZ4's skip acceleration, a match tried right after
// each match) and so produces the same bytes; the decompressor follows the block grammar byte by
// byte with no shared code with the kernel.

const MIN_MATCH = 4;
const LAST_LITERALS = 5;
const MF_LIMIT = 12;
const MAX_OFFSET = 65535;
const HASH_LOG = 12;
const SKIP_TRIGGER = 6;
const BAIL_STRIDE = 4096;

/** Why a block failed to decode, and where (the block offset of the element at fault). */
export interface Lz4Fault {
  readonly problem: "truncated" | "offset zero" | "offset before start" | "literals past input" | "literals past output" | "match past output" | "short";
  readonly offset: number;
}

function read32(data: Uint8Array, i: number): number {
  return (data[i]! | (data[i + 1]! << 8) | (data[i + 2]! << 16) | (data[i + 3]! << 24)) >>> 0;
}

/** Hash of the 5 bytes at a position (4 as a u32, then the fifth), like lz4_flex's 5-byte hash. */
function hash5(v: number, b4: number): number {
  return (Math.imul(v, 2654435761) + Math.imul(b4, 0x85ebca77)) >>> (32 - HASH_LOG);
}

/**
 * The LZ4 block for `data`; with `bailAfter` > 0, null when at a checkpoint (input position
 * `bailAfter`, then every 4 KiB) the block so far would not be at least 1/32 smaller than the
 * input so far (the same rule as the kernel's).
 */
export function lz4CompressReference(data: Uint8Array, bailAfter = 0): Uint8Array | null {
  const bail = bailAfter > 0;
  const len = data.length;
  const out: number[] = [];
  const table = new Uint32Array(1 << HASH_LOG);
  let anchor = 0;

  const pushLength = (n: number): void => {
    while (n >= 255) {
      out.push(255);
      n -= 255;
    }
    out.push(n);
  };
  const sequence = (litEnd: number, offset: number, matchLen: number): void => {
    const litLen = litEnd - anchor;
    const m = matchLen - MIN_MATCH;
    out.push((Math.min(litLen, 15) << 4) | Math.min(m, 15));
    if (litLen >= 15) pushLength(litLen - 15);
    for (let i = anchor; i < litEnd; i++) out.push(data[i]!);
    out.push(offset & 0xff, offset >> 8);
    if (m >= 15) pushLength(m - 15);
  };

  if (len >= MF_LIMIT + 1) {
    const mflimit = len - MF_LIMIT;
    const matchlimit = len - LAST_LITERALS;
    let ip = 1;
    let checkAt = bailAfter;
    let searching = true;
    let ref = 0;
    while (true) {
      if (searching) {
        let probes = 1 << SKIP_TRIGGER;
        let forward = ip;
        let found = false;
        while (true) {
          ip = forward;
          forward = ip + (probes >>> SKIP_TRIGGER);
          probes++;
          if (ip > mflimit) break;
          if (bail && ip >= checkAt) {
            if (out.length + (ip - anchor) > ip - (ip >>> 5)) return null;
            checkAt = ip + BAIL_STRIDE;
          }
          const seq = read32(data, ip);
          const h = hash5(seq, data[ip + 4]!);
          ref = table[h]!;
          table[h] = ip;
          if (ip - ref <= MAX_OFFSET && read32(data, ref) === seq) {
            found = true;
            break;
          }
        }
        if (!found) break;
        while (ip > anchor && ref > 0 && data[ip - 1] === data[ref - 1]) {
          ip--;
          ref--;
        }
      }
      let matchLen = MIN_MATCH;
      while (ip + matchLen < matchlimit && data[ip + matchLen] === data[ref + matchLen]) matchLen++;
      sequence(ip, ip - ref, matchLen);
      ip += matchLen;
      anchor = ip;
      if (ip > mflimit) break;
      table[hash5(read32(data, ip - 2), data[ip + 2]!)] = ip - 2;
      const seq = read32(data, ip);
      const h = hash5(seq, data[ip + 4]!);
      ref = table[h]!;
      table[h] = ip;
      if (ip - ref <= MAX_OFFSET && read32(data, ref) === seq) {
        searching = false;
      } else {
        ip++;
        searching = true;
      }
    }
  }
  const litLen = len - anchor;
  out.push(Math.min(litLen, 15) << 4);
  if (litLen >= 15) pushLength(litLen - 15);
  for (let i = anchor; i < len; i++) out.push(data[i]!);
  return Uint8Array.from(out);
}

/** Decodes `block` into exactly `size` bytes, or reports the first fault. */
export function lz4DecompressReference(block: Uint8Array, size: number): Uint8Array | Lz4Fault {
  const out = new Uint8Array(size);
  let ip = 0;
  let op = 0;
  const readLength = (seqStart: number, base: number, bound: number, problem: Lz4Fault["problem"]): number | Lz4Fault => {
    let n = base;
    if (n !== 15) return n;
    let b: number;
    do {
      if (ip >= block.length) return { problem: "truncated", offset: seqStart };
      b = block[ip++]!;
      n += b;
      if (n > bound) return { problem, offset: seqStart };
    } while (b === 255);
    return n;
  };
  while (true) {
    const seqStart = ip;
    if (ip >= block.length) return { problem: "truncated", offset: ip };
    const token = block[ip++]!;
    const lit = readLength(seqStart, token >> 4, block.length, "literals past input");
    if (typeof lit !== "number") return lit;
    if (lit > block.length - ip) return { problem: "literals past input", offset: seqStart };
    if (lit > size - op) return { problem: "literals past output", offset: seqStart };
    for (let i = 0; i < lit; i++) out[op++] = block[ip++]!;
    if (ip === block.length) break;
    if (block.length - ip < 2) return { problem: "truncated", offset: ip };
    const offset = block[ip]! | (block[ip + 1]! << 8);
    if (offset === 0) return { problem: "offset zero", offset: ip };
    if (offset > op) return { problem: "offset before start", offset: ip };
    ip += 2;
    const m = readLength(seqStart, token & 15, size, "match past output");
    if (typeof m !== "number") return m;
    const matchLen = m + MIN_MATCH;
    if (matchLen > size - op) return { problem: "match past output", offset: seqStart };
    for (let i = 0; i < matchLen; i++, op++) out[op] = out[op - offset]!;
  }
  if (op !== size) return { problem: "short", offset: block.length };
  return out;
}
