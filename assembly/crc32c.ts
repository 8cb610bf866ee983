// PLACEHOLDER (being written): CRC32C.
/** CRC32C (Castagnoli) of [ptr, ptr+len) continuing `crc` (0 to start): crc32c(b, crc32c(a)) = crc32c(a||b). */
export function crc32c(ptr: usize, len: usize, crc: u32): u32 {
  return 0;
}
