/**
 * Pure-TypeScript XXH3-64 (xxHash 0.8 `XXH3_64bits_withSeed`), written from the algorithm
 * description independently of the AssemblyScript kernel. It is the test oracle for the Wasm core
 * and the baseline its benchmarks are measured against; it is not used on any production path.
 *
 * 64-bit values are carried as pairs of u32 numbers (high, low). BigInt only appears at the API
 * boundary: per-stripe BigInt arithmetic would be two orders of magnitude slower, and a slow
 * baseline makes a useless benchmark.
 */

const TWO32 = 4294967296;

/** A mutable u64 as two u32 halves. Operations work in place and return `this` to chain. */
class U64 {
  hi: number;
  lo: number;

  constructor(hi = 0, lo = 0) {
    this.hi = hi >>> 0;
    this.lo = lo >>> 0;
  }

  static fromBigInt(value: bigint): U64 {
    return new U64(Number((value >> 32n) & 0xffffffffn), Number(value & 0xffffffffn));
  }

  toBigInt(): bigint {
    return (BigInt(this.hi) << 32n) | BigInt(this.lo);
  }

  clone(): U64 {
    return new U64(this.hi, this.lo);
  }

  set(other: U64): this {
    this.hi = other.hi;
    this.lo = other.lo;
    return this;
  }

  add(other: U64): this {
    const lo = this.lo + other.lo;
    this.hi = (this.hi + other.hi + (lo >= TWO32 ? 1 : 0)) >>> 0;
    this.lo = lo >>> 0;
    return this;
  }

  sub(other: U64): this {
    const lo = this.lo - other.lo;
    this.hi = (this.hi - other.hi - (lo < 0 ? 1 : 0)) >>> 0;
    this.lo = lo >>> 0;
    return this;
  }

  xor(other: U64): this {
    this.hi = (this.hi ^ other.hi) >>> 0;
    this.lo = (this.lo ^ other.lo) >>> 0;
    return this;
  }

  /** this ^= this >>> n, for 0 < n < 64: the xorshift step every finaliser uses. */
  xorShr(n: number): this {
    if (n >= 32) {
      this.lo = (this.lo ^ (this.hi >>> (n - 32))) >>> 0;
    } else {
      this.lo = (this.lo ^ ((this.lo >>> n) | (this.hi << (32 - n)))) >>> 0;
      this.hi = (this.hi ^ (this.hi >>> n)) >>> 0;
    }
    return this;
  }

  shr(n: number): this {
    if (n >= 32) {
      this.lo = this.hi >>> (n - 32);
      this.hi = 0;
    } else if (n > 0) {
      this.lo = ((this.lo >>> n) | (this.hi << (32 - n))) >>> 0;
      this.hi = this.hi >>> n;
    }
    return this;
  }

  rotl(n: number): this {
    // Callers only rotate by 24 and 49, so one half-swap plus a rotation below 32 covers it.
    if (n >= 32) {
      const t = this.hi;
      this.hi = this.lo;
      this.lo = t;
      n -= 32;
    }
    if (n > 0) {
      const hi = (this.hi << n) | (this.lo >>> (32 - n));
      const lo = (this.lo << n) | (this.hi >>> (32 - n));
      this.hi = hi >>> 0;
      this.lo = lo >>> 0;
    }
    return this;
  }

  bswap(): this {
    const hi = bswap32(this.lo);
    this.lo = bswap32(this.hi);
    this.hi = hi;
    return this;
  }

  /** Low 64 bits of the product. */
  mul(other: U64): this {
    mul32(this.lo, other.lo);
    const cross = (Math.imul(this.hi, other.lo) + Math.imul(this.lo, other.hi)) >>> 0;
    this.hi = (mulHi + cross) >>> 0;
    this.lo = mulLo;
    return this;
  }
}

function bswap32(x: number): number {
  return (((x & 0xff) << 24) | ((x & 0xff00) << 8) | ((x >>> 8) & 0xff00) | (x >>> 24)) >>> 0;
}

// Outputs of mul32. Module-level slots instead of a returned pair keep the hot loop allocation-free.
let mulHi = 0;
let mulLo = 0;

/**
 * Full 32x32->64 product of two u32 into (mulHi, mulLo). Splitting `b` in 16-bit halves keeps
 * every partial product below 2^53, so plain double arithmetic is exact.
 */
function mul32(a: number, b: number): void {
  const p = a * (b & 0xffff);
  const q = a * (b >>> 16);
  const qh = Math.floor(q / 65536);
  const t = p + (q - qh * 65536) * 65536;
  const th = Math.floor(t / TWO32);
  mulLo = t - th * TWO32;
  mulHi = qh + th;
}

/** XXH3_mul128_fold64: low 64 xor high 64 bits of the 128-bit product, written into `a`. */
function mul128Fold64(a: U64, b: U64): U64 {
  mul32(a.lo, b.lo);
  const llHi = mulHi;
  const llLo = mulLo;
  mul32(a.hi, b.lo);
  const hlHi = mulHi;
  const hlLo = mulLo;
  mul32(a.lo, b.hi);
  const lhHi = mulHi;
  const lhLo = mulLo;
  mul32(a.hi, b.hi);
  const hhHi = mulHi;
  const hhLo = mulLo;
  // cross = (ll >> 32) + lo32(hl) + lh, at most 3 * 2^32 in its low word.
  const crossLoSum = llHi + hlLo + lhLo;
  const crossLo = crossLoSum % TWO32;
  const crossHi = lhHi + Math.floor(crossLoSum / TWO32);
  // upper = (hl >> 32) + (cross >> 32) + hh; lower = (cross << 32) | lo32(ll)
  const upperLoSum = hlHi + crossHi + hhLo;
  const upperLo = upperLoSum % TWO32;
  const upperHi = (hhHi + Math.floor(upperLoSum / TWO32)) >>> 0;
  a.hi = (crossLo ^ upperHi) >>> 0;
  a.lo = (llLo ^ upperLo) >>> 0;
  return a;
}

const PRIME32_1 = new U64(0, 0x9e3779b1);
const PRIME32_2 = new U64(0, 0x85ebca77);
const PRIME32_3 = new U64(0, 0xc2b2ae3d);
const PRIME64_1 = new U64(0x9e3779b1, 0x85ebca87);
const PRIME64_2 = new U64(0xc2b2ae3d, 0x27d4eb4f);
const PRIME64_3 = new U64(0x165667b1, 0x9e3779f9);
const PRIME64_4 = new U64(0x85ebca77, 0xc2b2ae63);
const PRIME64_5 = new U64(0x27d4eb2f, 0x165667c5);
const PRIME_MX1 = new U64(0x16566791, 0x9e3779f9);
const PRIME_MX2 = new U64(0x9fb21c65, 0x1e98df25);

const STRIPE_LEN = 64;
const STRIPES_PER_BLOCK = 16;
const BUFFER_SIZE = 256;

/** XXH3_kSecret. */
const K_SECRET = Uint8Array.from([
  0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad, 0x1c, 0xde, 0xd4, 0x6d, 0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40,
  0xa4, 0xa4, 0xb7, 0xb3, 0x67, 0x1f, 0xcb, 0x79, 0xe6, 0x4e, 0xcc, 0xc0, 0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc, 0xff, 0x72, 0x21, 0xb8, 0x08, 0x46, 0x74,
  0xf7, 0x43, 0x24, 0x8e, 0xe0, 0x35, 0x90, 0xe6, 0x81, 0x3a, 0x26, 0x4c, 0x3c, 0x28, 0x52, 0xbb, 0x91, 0xc3, 0x00, 0xcb, 0x88, 0xd0, 0x65, 0x8b, 0x1b, 0x53,
  0x2e, 0xa3, 0x71, 0x64, 0x48, 0x97, 0xa2, 0x0d, 0xf9, 0x4e, 0x38, 0x19, 0xef, 0x46, 0xa9, 0xde, 0xac, 0xd8, 0xa8, 0xfa, 0x76, 0x3f, 0xe3, 0x9c, 0x34, 0x3f,
  0xf9, 0xdc, 0xbb, 0xc7, 0xc7, 0x0b, 0x4f, 0x1d, 0x8a, 0x51, 0xe0, 0x4b, 0xcd, 0xb4, 0x59, 0x31, 0xc8, 0x9f, 0x7e, 0xc9, 0xd9, 0x78, 0x73, 0x64, 0xea, 0xc5,
  0xac, 0x83, 0x34, 0xd3, 0xeb, 0xc3, 0xc5, 0x81, 0xa0, 0xff, 0xfa, 0x13, 0x63, 0xeb, 0x17, 0x0d, 0xdd, 0x51, 0xb7, 0xf0, 0xda, 0x49, 0xd3, 0x16, 0x55, 0x26,
  0x29, 0xd4, 0x68, 0x9e, 0x2b, 0x16, 0xbe, 0x58, 0x7d, 0x47, 0xa1, 0xfc, 0x8f, 0xf8, 0xb8, 0xd1, 0x7a, 0xd0, 0x31, 0xce, 0x45, 0xcb, 0x3a, 0x8f, 0x95, 0x16,
  0x04, 0x28, 0xaf, 0xd7, 0xfb, 0xca, 0xbb, 0x4b, 0x40, 0x7e,
]);
const K_SECRET_VIEW = new DataView(K_SECRET.buffer);

function read64(view: DataView, offset: number): U64 {
  return new U64(view.getUint32(offset + 4, true), view.getUint32(offset, true));
}

function read32(view: DataView, offset: number): U64 {
  return new U64(0, view.getUint32(offset, true));
}

function viewOf(data: Uint8Array): DataView {
  return new DataView(data.buffer, data.byteOffset, data.byteLength);
}

function xxh64Avalanche(h: U64): U64 {
  return h.xorShr(33).mul(PRIME64_2).xorShr(29).mul(PRIME64_3).xorShr(32);
}

function avalanche(h: U64): U64 {
  return h.xorShr(37).mul(PRIME_MX1).xorShr(32);
}

function rrmxmx(h: U64, len: number): U64 {
  h.xor(h.clone().rotl(49).xor(h.clone().rotl(24)));
  h.mul(PRIME_MX2);
  h.xor(h.clone().shr(35).add(new U64(0, len)));
  return h.mul(PRIME_MX2).xorShr(28);
}

function mix16B(input: DataView, offset: number, secretOffset: number, seed: U64): U64 {
  const lo = read64(input, offset).xor(read64(K_SECRET_VIEW, secretOffset).add(seed));
  const hi = read64(input, offset + 8).xor(read64(K_SECRET_VIEW, secretOffset + 8).sub(seed));
  return mul128Fold64(lo, hi);
}

function hashShort(input: DataView, len: number, seed: U64): U64 {
  const secret = K_SECRET_VIEW;
  if (len === 0) return xxh64Avalanche(seed.clone().xor(read64(secret, 56).xor(read64(secret, 64))));
  if (len <= 3) {
    const c1 = input.getUint8(0);
    const c2 = input.getUint8(len >>> 1);
    const c3 = input.getUint8(len - 1);
    const combined = ((c1 << 16) | (c2 << 24) | c3 | (len << 8)) >>> 0;
    const bitflip = read32(secret, 0).xor(read32(secret, 4)).add(seed);
    return xxh64Avalanche(new U64(0, combined).xor(bitflip));
  }
  if (len <= 8) {
    const s = seed.clone().xor(new U64(bswap32(seed.lo), 0));
    const input1 = input.getUint32(0, true);
    const input2 = input.getUint32(len - 4, true);
    const bitflip = read64(secret, 8).xor(read64(secret, 16)).sub(s);
    return rrmxmx(new U64(input1, input2).xor(bitflip), len);
  }
  if (len <= 16) {
    const bitflip1 = read64(secret, 24).xor(read64(secret, 32)).add(seed);
    const bitflip2 = read64(secret, 40).xor(read64(secret, 48)).sub(seed);
    const inputLo = read64(input, 0).xor(bitflip1);
    const inputHi = read64(input, len - 8).xor(bitflip2);
    const acc = new U64(0, len).add(inputLo.clone().bswap()).add(inputHi).add(mul128Fold64(inputLo.clone(), inputHi));
    return avalanche(acc);
  }
  const acc = new U64(0, len).mul(PRIME64_1);
  if (len <= 128) {
    // Pairs of 16-byte lanes from the front and the back, as many as the length covers.
    const pairs = len > 96 ? 4 : len > 64 ? 3 : len > 32 ? 2 : 1;
    for (let i = 0; i < pairs; i++) {
      acc.add(mix16B(input, 16 * i, 32 * i, seed));
      acc.add(mix16B(input, len - 16 * (i + 1), 32 * i + 16, seed));
    }
    return avalanche(acc);
  }
  for (let i = 0; i < 8; i++) acc.add(mix16B(input, 16 * i, 16 * i, seed));
  avalanche(acc);
  const rounds = Math.floor(len / 16);
  for (let i = 8; i < rounds; i++) acc.add(mix16B(input, 16 * i, 16 * (i - 8) + 3, seed));
  acc.add(mix16B(input, len - 16, 136 - 17, seed));
  return avalanche(acc);
}

/** The 192-byte secret for a seed: kSecret with the seed added to even and subtracted from odd words. */
function deriveSecret(seed: U64): Uint8Array {
  const out = new Uint8Array(K_SECRET.length);
  const view = new DataView(out.buffer);
  for (let i = 0; i < K_SECRET.length; i += 16) {
    const lo = read64(K_SECRET_VIEW, i).add(seed);
    const hi = read64(K_SECRET_VIEW, i + 8).sub(seed);
    view.setUint32(i, lo.lo, true);
    view.setUint32(i + 4, lo.hi, true);
    view.setUint32(i + 8, hi.lo, true);
    view.setUint32(i + 12, hi.hi, true);
  }
  return out;
}

function secretFor(seed: U64): DataView {
  return seed.lo === 0 && seed.hi === 0 ? K_SECRET_VIEW : viewOf(deriveSecret(seed));
}

/**
 * The long-input engine: eight 64-bit accumulators as [lo, hi] u32 pairs (a Uint32Array wraps
 * on store, which does the mod-2^32 part of every add for free).
 */
class LongState {
  readonly acc = new Uint32Array(16);
  readonly secret: DataView;
  /** Stripes consumed in the current 1 KiB block. */
  stripesInBlock = 0;

  constructor(secret: DataView, from?: LongState) {
    this.secret = secret;
    if (from !== undefined) {
      this.acc.set(from.acc);
      this.stripesInBlock = from.stripesInBlock;
      return;
    }
    const init = [PRIME32_3, PRIME64_1, PRIME64_2, PRIME64_3, PRIME64_4, PRIME32_2, PRIME64_5, PRIME32_1];
    init.forEach((v, i) => {
      this.acc[2 * i] = v.lo;
      this.acc[2 * i + 1] = v.hi;
    });
  }

  copy(): LongState {
    return new LongState(this.secret, this);
  }

  /** XXH3_accumulate_512: one stripe at `offset` of `input` with the secret at `secretOffset`. */
  stripe(input: DataView, offset: number, secretOffset: number): void {
    const acc = this.acc;
    const secret = this.secret;
    for (let i = 0; i < 8; i++) {
      const dl = input.getUint32(offset + 8 * i, true);
      const dh = input.getUint32(offset + 8 * i + 4, true);
      const kl = (dl ^ secret.getUint32(secretOffset + 8 * i, true)) >>> 0;
      const kh = (dh ^ secret.getUint32(secretOffset + 8 * i + 4, true)) >>> 0;
      // acc[i ^ 1] += data
      const j = 2 * (i ^ 1);
      let lo = acc[j]! + dl;
      acc[j + 1] = acc[j + 1]! + dh + (lo >= TWO32 ? 1 : 0);
      acc[j] = lo;
      // acc[i] += lo32(key) * hi32(key), the 32x32->64 product inlined from mul32
      const p = kl * (kh & 0xffff);
      const q = kl * (kh >>> 16);
      const qh = Math.floor(q / 65536);
      const t = p + (q - qh * 65536) * 65536;
      const th = Math.floor(t / TWO32);
      lo = acc[2 * i]! + (t - th * TWO32);
      acc[2 * i + 1] = acc[2 * i + 1]! + qh + th + (lo >= TWO32 ? 1 : 0);
      acc[2 * i] = lo;
    }
  }

  /** XXH3_scrambleAcc with the key at secret[128..192). */
  scramble(): void {
    const acc = this.acc;
    for (let i = 0; i < 8; i++) {
      const a = new U64(acc[2 * i + 1], acc[2 * i])
        .xorShr(47)
        .xor(read64(this.secret, 128 + 8 * i))
        .mul(PRIME32_1);
      acc[2 * i] = a.lo;
      acc[2 * i + 1] = a.hi;
    }
  }

  /** Consumes whole stripes in order, scrambling at each block end. */
  consume(input: DataView, offset: number, stripes: number): void {
    for (let n = 0; n < stripes; n++) {
      this.stripe(input, offset + n * STRIPE_LEN, 8 * this.stripesInBlock);
      if (++this.stripesInBlock === STRIPES_PER_BLOCK) {
        this.scramble();
        this.stripesInBlock = 0;
      }
    }
  }

  /** The stripe ending at the last input byte, then XXH3_mergeAccs. Destroys the state. */
  finish(last: DataView, lastOffset: number, totalLen: number): U64 {
    this.stripe(last, lastOffset, 192 - 64 - 7);
    const result = new U64(Math.floor(totalLen / TWO32), totalLen).mul(PRIME64_1);
    for (let i = 0; i < 4; i++) {
      const a = new U64(this.acc[4 * i + 1], this.acc[4 * i]).xor(read64(this.secret, 11 + 16 * i));
      const b = new U64(this.acc[4 * i + 3], this.acc[4 * i + 2]).xor(read64(this.secret, 11 + 16 * i + 8));
      result.add(mul128Fold64(a, b));
    }
    return avalanche(result);
  }
}

function checkSeed(seed: bigint): U64 {
  if (typeof seed !== "bigint" || seed < 0n || seed >= 1n << 64n) {
    throw new RangeError("seed must be a bigint in [0, 2^64)");
  }
  return U64.fromBigInt(seed);
}

/** XXH3-64 of `data` with `seed` (a bigint in [0, 2^64)), as a bigint in [0, 2^64). */
export function xxh3Reference(data: Uint8Array, seed: bigint = 0n): bigint {
  const s = checkSeed(seed);
  const len = data.length;
  const view = viewOf(data);
  if (len <= 240) return hashShort(view, len, s).toBigInt();
  const state = new LongState(secretFor(s));
  state.consume(view, 0, Math.floor((len - 1) / STRIPE_LEN));
  return state.finish(view, len - STRIPE_LEN, len).toBigInt();
}

/**
 * Streaming XXH3-64: any split of the input into update() calls gives the same digest as
 * xxh3Reference on the concatenation, and digest() leaves the state usable.
 */
export class Xxh3Reference {
  readonly #seed: U64;
  readonly #long: LongState;
  /** Input not yet consumed as stripes; the stripe holding the final byte always stays here. */
  readonly #buffer = new Uint8Array(BUFFER_SIZE);
  readonly #bufferView = new DataView(this.#buffer.buffer);
  #buffered = 0;
  /** The 64 bytes just before the buffered ones, needed when fewer than 64 are buffered. */
  readonly #previous = new Uint8Array(STRIPE_LEN);
  #total = 0;

  /** @param seed a bigint in [0, 2^64); throws RangeError otherwise */
  constructor(seed: bigint = 0n) {
    this.#seed = checkSeed(seed);
    this.#long = new LongState(secretFor(this.#seed));
  }

  /** Adds `data`; returns the hasher for chaining. */
  update(data: Uint8Array): this {
    const len = data.length;
    this.#total += len;
    if (len <= BUFFER_SIZE - this.#buffered) {
      this.#buffer.set(data, this.#buffered);
      this.#buffered += len;
      return this;
    }
    let offset = 0;
    if (this.#buffered > 0) {
      // More input follows the buffer, so all four of its stripes can be consumed.
      offset = BUFFER_SIZE - this.#buffered;
      this.#buffer.set(data.subarray(0, offset), this.#buffered);
      this.#long.consume(this.#bufferView, 0, BUFFER_SIZE / STRIPE_LEN);
      this.#previous.set(this.#buffer.subarray(BUFFER_SIZE - STRIPE_LEN));
      this.#buffered = 0;
    }
    const rest = len - offset;
    if (rest > BUFFER_SIZE) {
      const stripes = Math.floor((rest - 1) / STRIPE_LEN);
      this.#long.consume(viewOf(data), offset, stripes);
      offset += stripes * STRIPE_LEN;
      this.#previous.set(data.subarray(offset - STRIPE_LEN, offset));
    }
    this.#buffer.set(data.subarray(offset));
    this.#buffered = len - offset;
    return this;
  }

  /** XXH3-64 of everything added so far; the state stays usable for more updates. */
  digest(): bigint {
    const buffered = this.#buffered;
    if (this.#total <= 240) return hashShort(this.#bufferView, this.#total, this.#seed).toBigInt();
    const state = this.#long.copy();
    if (buffered >= STRIPE_LEN) {
      state.consume(this.#bufferView, 0, Math.floor((buffered - 1) / STRIPE_LEN));
      return state.finish(this.#bufferView, buffered - STRIPE_LEN, this.#total).toBigInt();
    }
    const last = new Uint8Array(STRIPE_LEN);
    last.set(this.#previous.subarray(buffered));
    last.set(this.#buffer.subarray(0, buffered), STRIPE_LEN - buffered);
    return state.finish(new DataView(last.buffer), 0, this.#total).toBigInt();
  }
}
