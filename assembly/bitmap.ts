// Page bitmaps (bit p of byte p>>3, LSB first) for dirty tracking: range marks proportional to
// the range's bytes, not its pages, and whole-map operations 8 bytes at a time.

/** Sets bits [first, first+count); returns how many were clear before. */
export function bitmap_set_range(map: usize, first: u32, count: u32): u32 {
  let added: u32 = 0;
  let bit = first;
  const end = first + count;
  while (bit < end && (bit & 7) != 0) {
    added += setBit(map, bit);
    bit++;
  }
  while (bit + 64 <= end && (bit & 63) == 0) {
    const p = map + (bit >> 3);
    added += 64 - <u32>popcnt<u64>(load<u64>(p));
    store<u64>(p, 0xffff_ffff_ffff_ffff);
    bit += 64;
  }
  while (bit + 8 <= end) {
    const p = map + (bit >> 3);
    added += 8 - popcnt<u32>(<u32>load<u8>(p));
    store<u8>(p, 0xff);
    bit += 8;
  }
  while (bit < end) {
    added += setBit(map, bit);
    bit++;
  }
  return added;
}

@inline
function setBit(map: usize, bit: u32): u32 {
  const p = map + (bit >> 3);
  const mask = <u8>1 << <u8>(bit & 7);
  const old = load<u8>(p);
  store<u8>(p, old | mask);
  return (old & mask) == 0 ? 1 : 0;
}

/** Clears bits [first, first+count). */
export function bitmap_clear_range(map: usize, first: u32, count: u32): void {
  let bit = first;
  const end = first + count;
  while (bit < end && (bit & 7) != 0) {
    const p = map + (bit >> 3);
    store<u8>(p, load<u8>(p) & ~(<u8>1 << <u8>(bit & 7)));
    bit++;
  }
  if (bit + 8 <= end) {
    const bytes = (end - bit) >> 3;
    memory.fill(map + (bit >> 3), 0, bytes);
    bit += bytes << 3;
  }
  while (bit < end) {
    const p = map + (bit >> 3);
    store<u8>(p, load<u8>(p) & ~(<u8>1 << <u8>(bit & 7)));
    bit++;
  }
}

/** dst |= src over `bytes` bytes. */
export function bitmap_or(dst: usize, src: usize, bytes: usize): void {
  let i: usize = 0;
  for (; i + 16 <= bytes; i += 16) v128.store(dst + i, v128.or(v128.load(dst + i), v128.load(src + i)));
  for (; i < bytes; i++) store<u8>(dst + i, load<u8>(dst + i) | load<u8>(src + i));
}

/** Number of set bits in the first `bits` bits. */
export function bitmap_count(map: usize, bits: u32): u32 {
  let total: u32 = 0;
  let i: u32 = 0;
  for (; i + 64 <= bits; i += 64) total += <u32>popcnt<u64>(load<u64>(map + (i >> 3)));
  for (; i + 8 <= bits; i += 8) total += popcnt<u32>(<u32>load<u8>(map + (i >> 3)));
  if (i < bits) total += popcnt<u32>(<u32>load<u8>(map + (i >> 3)) & ((<u32>1 << (bits - i)) - 1));
  return total;
}
