// XXH3-64 (xxHash 0.8, XXH3_64bits_withSeed), one-shot and streaming, bit-identical to the
// reference implementation for every length and seed.
//
// The long-input path (> 240 bytes) is where the time goes, so it is written with v128 in the
// form measured fastest on this target ("variant C" in the performance anchors): two input
// vectors per step, the 32-bit key halves gathered with one pair of i32x4 shuffles, and the
// 32x32->64 products taken with i64x2.extmul. Everything short is scalar, as in the reference.
//
// Nothing here allocates, imports or (for in-bounds arguments) traps. Out-of-bounds arguments
// give 0 / no-op instead of a trap; the TS wrappers never pass them.

// @ts-ignore: decorator
@inline const PRIME32_1: u64 = 0x9E3779B1;
// @ts-ignore: decorator
@inline const PRIME32_2: u64 = 0x85EBCA77;
// @ts-ignore: decorator
@inline const PRIME32_3: u64 = 0xC2B2AE3D;
// @ts-ignore: decorator
@inline const PRIME64_1: u64 = 0x9E3779B185EBCA87;
// @ts-ignore: decorator
@inline const PRIME64_2: u64 = 0xC2B2AE3D27D4EB4F;
// @ts-ignore: decorator
@inline const PRIME64_3: u64 = 0x165667B19E3779F9;
// @ts-ignore: decorator
@inline const PRIME64_4: u64 = 0x85EBCA77C2B2AE63;
// @ts-ignore: decorator
@inline const PRIME64_5: u64 = 0x27D4EB2F165667C5;
// @ts-ignore: decorator
@inline const PRIME_MX1: u64 = 0x165667919E3779F9;
// @ts-ignore: decorator
@inline const PRIME_MX2: u64 = 0x9FB21C651E98DF25;

// @ts-ignore: decorator
@inline const STRIPE_LEN: usize = 64;
// (secret size - stripe) / 8 bytes of secret consumed per stripe = 16 stripes per block.
// @ts-ignore: decorator
@inline const STRIPES_PER_BLOCK: usize = 16;
// @ts-ignore: decorator
@inline const SECRET_SIZE: usize = 192;
// @ts-ignore: decorator
@inline const SECRET_SCRAMBLE: usize = 128; // SECRET_SIZE - STRIPE_LEN
// @ts-ignore: decorator
@inline const SECRET_LASTACC: usize = 121; // SECRET_SIZE - STRIPE_LEN - 7
// @ts-ignore: decorator
@inline const SECRET_MERGEACCS: usize = 11;
// @ts-ignore: decorator
@inline const MIDSIZE_MAX: usize = 240;
// @ts-ignore: decorator
@inline const MIDSIZE_STARTOFFSET: usize = 3;
// @ts-ignore: decorator
@inline const MIDSIZE_LASTOFFSET: usize = 17;
// @ts-ignore: decorator
@inline const SECRET_SIZE_MIN: usize = 136;
// @ts-ignore: decorator
@inline const BUFFER_SIZE: usize = 256;

/** XXH3_kSecret, the default 192-byte secret. */
const K_SECRET: usize = memory.data<u8>([
  0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad, 0x1c,
  0xde, 0xd4, 0x6d, 0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3, 0x67, 0x1f,
  0xcb, 0x79, 0xe6, 0x4e, 0xcc, 0xc0, 0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc, 0xff, 0x72, 0x21,
  0xb8, 0x08, 0x46, 0x74, 0xf7, 0x43, 0x24, 0x8e, 0xe0, 0x35, 0x90, 0xe6, 0x81, 0x3a, 0x26, 0x4c,
  0x3c, 0x28, 0x52, 0xbb, 0x91, 0xc3, 0x00, 0xcb, 0x88, 0xd0, 0x65, 0x8b, 0x1b, 0x53, 0x2e, 0xa3,
  0x71, 0x64, 0x48, 0x97, 0xa2, 0x0d, 0xf9, 0x4e, 0x38, 0x19, 0xef, 0x46, 0xa9, 0xde, 0xac, 0xd8,
  0xa8, 0xfa, 0x76, 0x3f, 0xe3, 0x9c, 0x34, 0x3f, 0xf9, 0xdc, 0xbb, 0xc7, 0xc7, 0x0b, 0x4f, 0x1d,
  0x8a, 0x51, 0xe0, 0x4b, 0xcd, 0xb4, 0x59, 0x31, 0xc8, 0x9f, 0x7e, 0xc9, 0xd9, 0x78, 0x73, 0x64,
  0xea, 0xc5, 0xac, 0x83, 0x34, 0xd3, 0xeb, 0xc3, 0xc5, 0x81, 0xa0, 0xff, 0xfa, 0x13, 0x63, 0xeb,
  0x17, 0x0d, 0xdd, 0x51, 0xb7, 0xf0, 0xda, 0x49, 0xd3, 0x16, 0x55, 0x26, 0x29, 0xd4, 0x68, 0x9e,
  0x2b, 0x16, 0xbe, 0x58, 0x7d, 0x47, 0xa1, 0xfc, 0x8f, 0xf8, 0xb8, 0xd1, 0x7a, 0xd0, 0x31, 0xce,
  0x45, 0xcb, 0x3a, 0x8f, 0x95, 0x16, 0x04, 0x28, 0xaf, 0xd7, 0xfb, 0xca, 0xbb, 0x4b, 0x40, 0x7e,
], 64);

// The one-shot long path needs 64 bytes of accumulators and, when seeded, a 192-byte derived
// secret, and the module has no stack to put them on. They live in a per-instance block: the
// static one by default (an instance runs one call at a time), or one the caller hands over with
// set_thread_scratch when several instances share one memory (the worker pool's threaded build).
const ONESHOT_STATIC: usize = memory.data(<i32>(64 + SECRET_SIZE + 64), 64);
let oneshotScratch: usize = ONESHOT_STATIC;

/** Bytes of the per-thread scratch block (64-byte aligned): accumulators, secret, chain input. */
export function thread_scratch_size(): u32 {
  return <u32>(64 + SECRET_SIZE + 64);
}

/** Makes this instance use `ptr` (thread_scratch_size() bytes, 64-aligned) for its scratch. */
export function set_thread_scratch(ptr: usize): void {
  oneshotScratch = ptr;
}

/** 16 bytes of the per-thread block for callers that hash two words (the stream digest). */
// @ts-ignore: decorator
@inline
export function chainScratch(): usize {
  return oneshotScratch + 64 + SECRET_SIZE;
}

// Streaming state layout (offsets from the caller's 64-byte aligned block). The secret is copied
// into every state, even for seed 0, so the update path never branches on where it lives.
// @ts-ignore: decorator
@inline const ST_ACC: usize = 0; // 8 x u64 accumulators
// @ts-ignore: decorator
@inline const ST_SECRET: usize = 64; // 192-byte secret (kSecret, or derived from the seed)
// @ts-ignore: decorator
@inline const ST_BUFFER: usize = 256; // 256-byte input buffer; its last stripe doubles as the
// copy of the most recently consumed stripe, which digest needs when fewer than 64 bytes wait
// @ts-ignore: decorator
@inline const ST_TOTAL: usize = 512; // u64 total length
// @ts-ignore: decorator
@inline const ST_SEED: usize = 520; // u64 seed
// @ts-ignore: decorator
@inline const ST_BUFFERED: usize = 528; // u32 bytes waiting in the buffer (1..256 once started)
// @ts-ignore: decorator
@inline const ST_STRIPES: usize = 532; // u32 stripes consumed in the current block (0..15)
// digest works on copies so the state stays usable after it:
// @ts-ignore: decorator
@inline const ST_TMP_ACC: usize = 576; // 64 bytes
// @ts-ignore: decorator
@inline const ST_TMP_STRIPE: usize = 640; // 64 bytes
// @ts-ignore: decorator
@inline const STATE_SIZE: usize = 704;

// ---------------------------------------------------------------------------------------------
// Scalar helpers

// @ts-ignore: decorator
@inline function readLE64(p: usize): u64 {
  return load<u64>(p);
}

// @ts-ignore: decorator
@inline function readLE32(p: usize): u64 {
  return <u64>load<u32>(p);
}

/** Low 64 bits xor high 64 bits of the 128-bit product (Wasm has no 64x64->128 multiply). */
// @ts-ignore: decorator
@inline function mul128Fold64(lhs: u64, rhs: u64): u64 {
  const lo_lo = (lhs & 0xFFFFFFFF) * (rhs & 0xFFFFFFFF);
  const hi_lo = (lhs >> 32) * (rhs & 0xFFFFFFFF);
  const lo_hi = (lhs & 0xFFFFFFFF) * (rhs >> 32);
  const hi_hi = (lhs >> 32) * (rhs >> 32);
  const cross = (lo_lo >> 32) + (hi_lo & 0xFFFFFFFF) + lo_hi;
  const upper = (hi_lo >> 32) + (cross >> 32) + hi_hi;
  const lower = (cross << 32) | (lo_lo & 0xFFFFFFFF);
  return lower ^ upper;
}

// @ts-ignore: decorator
@inline function xxh64Avalanche(h: u64): u64 {
  h ^= h >> 33;
  h *= PRIME64_2;
  h ^= h >> 29;
  h *= PRIME64_3;
  h ^= h >> 32;
  return h;
}

// @ts-ignore: decorator
@inline function avalanche(h: u64): u64 {
  h ^= h >> 37;
  h *= PRIME_MX1;
  h ^= h >> 32;
  return h;
}

// @ts-ignore: decorator
@inline function rrmxmx(h: u64, len: u64): u64 {
  h ^= rotl<u64>(h, 49) ^ rotl<u64>(h, 24);
  h *= PRIME_MX2;
  h ^= (h >> 35) + len;
  h *= PRIME_MX2;
  h ^= h >> 28;
  return h;
}

// @ts-ignore: decorator
@inline function mix16B(input: usize, secret: usize, seed: u64): u64 {
  const lo = readLE64(input);
  const hi = readLE64(input + 8);
  return mul128Fold64(lo ^ (readLE64(secret) + seed), hi ^ (readLE64(secret + 8) - seed));
}

function len0to16(input: usize, len: usize, secret: usize, seed: u64): u64 {
  if (len > 8) {
    const bitflip1 = (readLE64(secret + 24) ^ readLE64(secret + 32)) + seed;
    const bitflip2 = (readLE64(secret + 40) ^ readLE64(secret + 48)) - seed;
    const inputLo = readLE64(input) ^ bitflip1;
    const inputHi = readLE64(input + len - 8) ^ bitflip2;
    const acc = <u64>len + bswap<u64>(inputLo) + inputHi + mul128Fold64(inputLo, inputHi);
    return avalanche(acc);
  }
  if (len >= 4) {
    seed ^= <u64>bswap<u32>(<u32>seed) << 32;
    const input1 = readLE32(input);
    const input2 = readLE32(input + len - 4);
    const bitflip = (readLE64(secret + 8) ^ readLE64(secret + 16)) - seed;
    const input64 = input2 + (input1 << 32);
    return rrmxmx(input64 ^ bitflip, <u64>len);
  }
  if (len > 0) {
    const c1 = <u32>load<u8>(input);
    const c2 = <u32>load<u8>(input + (len >> 1));
    const c3 = <u32>load<u8>(input + len - 1);
    const combined = (c1 << 16) | (c2 << 24) | c3 | (<u32>len << 8);
    const bitflip = (readLE32(secret) ^ readLE32(secret + 4)) + seed;
    return xxh64Avalanche(<u64>combined ^ bitflip);
  }
  return xxh64Avalanche(seed ^ (readLE64(secret + 56) ^ readLE64(secret + 64)));
}

function len17to128(input: usize, len: usize, secret: usize, seed: u64): u64 {
  let acc = <u64>len * PRIME64_1;
  if (len > 32) {
    if (len > 64) {
      if (len > 96) {
        acc += mix16B(input + 48, secret + 96, seed);
        acc += mix16B(input + len - 64, secret + 112, seed);
      }
      acc += mix16B(input + 32, secret + 64, seed);
      acc += mix16B(input + len - 48, secret + 80, seed);
    }
    acc += mix16B(input + 16, secret + 32, seed);
    acc += mix16B(input + len - 32, secret + 48, seed);
  }
  acc += mix16B(input, secret, seed);
  acc += mix16B(input + len - 16, secret + 16, seed);
  return avalanche(acc);
}

function len129to240(input: usize, len: usize, secret: usize, seed: u64): u64 {
  let acc = <u64>len * PRIME64_1;
  const nbRounds = len >> 4;
  for (let i: usize = 0; i < 8; i++) acc += mix16B(input + 16 * i, secret + 16 * i, seed);
  acc = avalanche(acc);
  for (let i: usize = 8; i < nbRounds; i++) {
    acc += mix16B(input + 16 * i, secret + 16 * (i - 8) + MIDSIZE_STARTOFFSET, seed);
  }
  acc += mix16B(input + len - 16, secret + SECRET_SIZE_MIN - MIDSIZE_LASTOFFSET, seed);
  return avalanche(acc);
}

/** Inputs of at most 240 bytes: they never touch the accumulators, only kSecret and the seed. */
function hashShort(input: usize, len: usize, seed: u64): u64 {
  if (len <= 16) return len0to16(input, len, K_SECRET, seed);
  if (len <= 128) return len17to128(input, len, K_SECRET, seed);
  return len129to240(input, len, K_SECRET, seed);
}

/** XXH3_initCustomSecret: kSecret with the seed added to even and subtracted from odd words. */
function initCustomSecret(dst: usize, seed: u64): void {
  const delta = i64x2(<i64>seed, -<i64>seed);
  for (let i: usize = 0; i < SECRET_SIZE; i += 16) {
    v128.store(dst + i, i64x2.add(v128.load(K_SECRET + i), delta));
  }
}

// @ts-ignore: decorator
@inline function initAccs(acc: usize): void {
  store<u64>(acc, PRIME32_3, 0);
  store<u64>(acc, PRIME64_1, 8);
  store<u64>(acc, PRIME64_2, 16);
  store<u64>(acc, PRIME64_3, 24);
  store<u64>(acc, PRIME64_4, 32);
  store<u64>(acc, PRIME32_2, 40);
  store<u64>(acc, PRIME64_5, 48);
  store<u64>(acc, PRIME32_1, 56);
}

// ---------------------------------------------------------------------------------------------
// The v128 long-input core

/**
 * Accumulates `nbStripes` 64-byte stripes from `input` into the accumulators at `acc`, starting
 * `stripesSoFar` stripes into the current block, and scrambles at every block end, exactly like
 * XXH3_consumeStripes. Returns the new position in the block. The accumulators stay in registers
 * for the whole call, so callers pass long runs (the one-shot passes the whole input at once).
 */
function consumeStripes(acc: usize, input: usize, nbStripes: usize, secret: usize, stripesSoFar: usize): usize {
  let a0 = v128.load(acc);
  let a1 = v128.load(acc, 16);
  let a2 = v128.load(acc, 32);
  let a3 = v128.load(acc, 48);
  while (nbStripes != 0) {
    let n = STRIPES_PER_BLOCK - stripesSoFar;
    if (n > nbStripes) n = nbStripes;
    nbStripes -= n;
    stripesSoFar += n;
    let s = secret + (stripesSoFar - n) * 8;
    const end = input + n * STRIPE_LEN;
    do {
      // acc[i] += lo32(k[i]) * hi32(k[i]) with k = data ^ secret, and acc[i ^ 1] += data[i].
      // Per pair of vectors, one shuffle pair puts the four low halves in one vector and the four
      // high halves in the other; extmul_low/high then give the products for each vector.
      const d0 = v128.load(input);
      const d1 = v128.load(input, 16);
      const d2 = v128.load(input, 32);
      const d3 = v128.load(input, 48);
      const k0 = v128.xor(d0, v128.load(s));
      const k1 = v128.xor(d1, v128.load(s, 16));
      const k2 = v128.xor(d2, v128.load(s, 32));
      const k3 = v128.xor(d3, v128.load(s, 48));
      const lo01 = i32x4.shuffle(k0, k1, 0, 2, 4, 6);
      const hi01 = i32x4.shuffle(k0, k1, 1, 3, 5, 7);
      const lo23 = i32x4.shuffle(k2, k3, 0, 2, 4, 6);
      const hi23 = i32x4.shuffle(k2, k3, 1, 3, 5, 7);
      a0 = i64x2.add(a0, i64x2.add(i64x2.extmul_low_i32x4_u(lo01, hi01), i64x2.shuffle(d0, d0, 1, 0)));
      a1 = i64x2.add(a1, i64x2.add(i64x2.extmul_high_i32x4_u(lo01, hi01), i64x2.shuffle(d1, d1, 1, 0)));
      a2 = i64x2.add(a2, i64x2.add(i64x2.extmul_low_i32x4_u(lo23, hi23), i64x2.shuffle(d2, d2, 1, 0)));
      a3 = i64x2.add(a3, i64x2.add(i64x2.extmul_high_i32x4_u(lo23, hi23), i64x2.shuffle(d3, d3, 1, 0)));
      input += STRIPE_LEN;
      s += 8;
    } while (input != end);
    if (stripesSoFar == STRIPES_PER_BLOCK) {
      // XXH3_scrambleAcc: acc = (acc ^ (acc >> 47) ^ key) * PRIME32_1. Once per KiB, so the
      // emulated i64x2.mul does not matter.
      const sk = secret + SECRET_SCRAMBLE;
      const p = i64x2.splat(<i64>PRIME32_1);
      a0 = i64x2.mul(v128.xor(v128.xor(a0, i64x2.shr_u(a0, 47)), v128.load(sk)), p);
      a1 = i64x2.mul(v128.xor(v128.xor(a1, i64x2.shr_u(a1, 47)), v128.load(sk, 16)), p);
      a2 = i64x2.mul(v128.xor(v128.xor(a2, i64x2.shr_u(a2, 47)), v128.load(sk, 32)), p);
      a3 = i64x2.mul(v128.xor(v128.xor(a3, i64x2.shr_u(a3, 47)), v128.load(sk, 48)), p);
      stripesSoFar = 0;
    }
  }
  v128.store(acc, a0);
  v128.store(acc, a1, 16);
  v128.store(acc, a2, 32);
  v128.store(acc, a3, 48);
  return stripesSoFar;
}

/** The last stripe of a long input, with its own secret offset and never followed by a scramble. */
// @ts-ignore: decorator
@inline function accumulateLastStripe(acc: usize, stripe: usize, secret: usize): void {
  // One stripe from position 0 of a block never reaches the block end, so no scramble happens.
  consumeStripes(acc, stripe, 1, secret + SECRET_LASTACC, 0);
}

function mergeAccs(acc: usize, secret: usize, start: u64): u64 {
  let result = start;
  for (let i: usize = 0; i < 4; i++) {
    result += mul128Fold64(
      load<u64>(acc + 16 * i) ^ readLE64(secret + 16 * i),
      load<u64>(acc + 16 * i + 8) ^ readLE64(secret + 16 * i + 8),
    );
  }
  return avalanche(result);
}

function hashLong(input: usize, len: usize, secret: usize): u64 {
  const acc = oneshotScratch;
  initAccs(acc);
  // All stripes but the one holding the last byte; XXH3_hashLong_internal_loop's block loop
  // plus its partial last block are exactly this run with a scramble at each block end.
  consumeStripes(acc, input, (len - 1) / STRIPE_LEN, secret, 0);
  accumulateLastStripe(acc, input + len - STRIPE_LEN, secret);
  return mergeAccs(acc, secret + SECRET_MERGEACCS, <u64>len * PRIME64_1);
}

// @ts-ignore: decorator
@inline function inBounds(ptr: usize, len: usize): bool {
  return <u64>ptr + <u64>len <= (<u64>memory.size() << 16);
}

// ---------------------------------------------------------------------------------------------
// Exports

/** XXH3-64 of [ptr, ptr+len) with `seed`, bit-identical to the reference XXH3_64bits_withSeed. */
export function xxh3_64(ptr: usize, len: usize, seed: u64): u64 {
  if (!inBounds(ptr, len)) return 0;
  if (len <= MIDSIZE_MAX) return hashShort(ptr, len, seed);
  if (seed == 0) return hashLong(ptr, len, K_SECRET);
  const secret = oneshotScratch + 64;
  initCustomSecret(secret, seed);
  return hashLong(ptr, len, secret);
}

/** Bytes of streaming state (caller allocates it, 64-byte aligned). */
export function xxh3_state_size(): u32 {
  return <u32>STATE_SIZE;
}

/** Starts a streaming hash with `seed` in the state at `state`. */
export function xxh3_reset(state: usize, seed: u64): void {
  if (!inBounds(state, STATE_SIZE)) return;
  initAccs(state + ST_ACC);
  initCustomSecret(state + ST_SECRET, seed);
  store<u64>(state + ST_TOTAL, 0);
  store<u64>(state + ST_SEED, seed);
  store<u32>(state + ST_BUFFERED, 0);
  store<u32>(state + ST_STRIPES, 0);
}

/** Feeds [ptr, ptr+len) into the streaming state; any segmentation gives the same digest. */
export function xxh3_update(state: usize, ptr: usize, len: usize): void {
  if (len == 0 || !inBounds(state, STATE_SIZE) || !inBounds(ptr, len)) return;
  const buffer = state + ST_BUFFER;
  const secret = state + ST_SECRET;
  // Clamp what is read back from caller memory so a corrupted state cannot send a loop out of
  // bounds (it gives a wrong digest instead of a trap).
  let buffered = <usize>load<u32>(state + ST_BUFFERED);
  if (buffered > BUFFER_SIZE) buffered = BUFFER_SIZE;
  let stripesSoFar = <usize>load<u32>(state + ST_STRIPES);
  if (stripesSoFar >= STRIPES_PER_BLOCK) stripesSoFar = 0;
  store<u64>(state + ST_TOTAL, load<u64>(state + ST_TOTAL) + <u64>len);

  if (len <= BUFFER_SIZE - buffered) {
    memory.copy(buffer + buffered, ptr, len);
    store<u32>(state + ST_BUFFERED, <u32>(buffered + len));
    return;
  }
  let input = ptr;
  const end = ptr + len;
  if (buffered != 0) {
    // Top the buffer up and consume it: more input follows, so none of it can be the last stripe.
    const fill = BUFFER_SIZE - buffered;
    memory.copy(buffer + buffered, input, fill);
    input += fill;
    stripesSoFar = consumeStripes(state + ST_ACC, buffer, BUFFER_SIZE / STRIPE_LEN, secret, stripesSoFar);
    // buffer[192..256) now holds the last consumed stripe, as digest expects.
  }
  const remaining = end - input;
  if (remaining > BUFFER_SIZE) {
    // Large input: run the v128 loop directly on the caller's memory, keeping at least one byte
    // (the reference never consumes the stripe holding the final byte before digest).
    const nbStripes = (remaining - 1) / STRIPE_LEN;
    stripesSoFar = consumeStripes(state + ST_ACC, input, nbStripes, secret, stripesSoFar);
    input += nbStripes * STRIPE_LEN;
    memory.copy(buffer + BUFFER_SIZE - STRIPE_LEN, input - STRIPE_LEN, STRIPE_LEN);
  }
  buffered = end - input;
  memory.copy(buffer, input, buffered);
  store<u32>(state + ST_BUFFERED, <u32>buffered);
  store<u32>(state + ST_STRIPES, <u32>stripesSoFar);
}

/** The digest of everything fed so far (the state stays usable: more updates may follow). */
export function xxh3_digest(state: usize): u64 {
  if (!inBounds(state, STATE_SIZE)) return 0;
  const total = load<u64>(state + ST_TOTAL);
  const buffer = state + ST_BUFFER;
  let buffered = <usize>load<u32>(state + ST_BUFFERED);
  if (buffered > BUFFER_SIZE) buffered = BUFFER_SIZE;
  if (total <= <u64>MIDSIZE_MAX) {
    // Everything is still in the buffer; short inputs hash with kSecret and the seed directly.
    return hashShort(buffer, <usize>total, load<u64>(state + ST_SEED));
  }
  const secret = state + ST_SECRET;
  let stripesSoFar = <usize>load<u32>(state + ST_STRIPES);
  if (stripesSoFar >= STRIPES_PER_BLOCK) stripesSoFar = 0;
  const acc = state + ST_TMP_ACC;
  memory.copy(acc, state + ST_ACC, 64);
  let lastStripe: usize;
  if (buffered >= STRIPE_LEN) {
    consumeStripes(acc, buffer, (buffered - 1) / STRIPE_LEN, secret, stripesSoFar);
    lastStripe = buffer + buffered - STRIPE_LEN;
  } else {
    // The last 64 input bytes straddle the previously consumed stripe (kept at the buffer's end)
    // and the buffered tail.
    lastStripe = state + ST_TMP_STRIPE;
    const catchup = STRIPE_LEN - buffered;
    memory.copy(lastStripe, buffer + BUFFER_SIZE - catchup, catchup);
    memory.copy(lastStripe + catchup, buffer, buffered);
  }
  accumulateLastStripe(acc, lastStripe, secret);
  return mergeAccs(acc, secret + SECRET_MERGEACCS, total * PRIME64_1);
}
