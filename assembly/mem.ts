// Small v128 memory predicates used per page by the codec kernels.

/** True if [a, a+len) and [b, b+len) hold the same bytes. */
@inline
export function bytesEqual(a: usize, b: usize, len: usize): bool {
  let i: usize = 0;
  for (; i + 64 <= len; i += 64) {
    const x = v128.or(
      v128.or(v128.xor(v128.load(a + i), v128.load(b + i)), v128.xor(v128.load(a + i, 16), v128.load(b + i, 16))),
      v128.or(v128.xor(v128.load(a + i, 32), v128.load(b + i, 32)), v128.xor(v128.load(a + i, 48), v128.load(b + i, 48))),
    );
    if (v128.any_true(x)) return false;
  }
  for (; i + 8 <= len; i += 8) {
    if (load<u64>(a + i) != load<u64>(b + i)) return false;
  }
  for (; i < len; i++) {
    if (load<u8>(a + i) != load<u8>(b + i)) return false;
  }
  return true;
}

/** True if [p, p+len) is all zero bytes. */
@inline
export function bytesZero(p: usize, len: usize): bool {
  let i: usize = 0;
  for (; i + 64 <= len; i += 64) {
    const x = v128.or(v128.or(v128.load(p + i), v128.load(p + i, 16)), v128.or(v128.load(p + i, 32), v128.load(p + i, 48)));
    if (v128.any_true(x)) return false;
  }
  for (; i + 8 <= len; i += 8) {
    if (load<u64>(p + i) != 0) return false;
  }
  for (; i < len; i++) {
    if (load<u8>(p + i) != 0) return false;
  }
  return true;
}
