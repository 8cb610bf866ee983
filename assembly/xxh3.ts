// PLACEHOLDER (being written): XXH3-64.
/** XXH3-64 of [ptr, ptr+len) with `seed`, bit-identical to the reference XXH3_64bits_withSeed. */
export function xxh3_64(ptr: usize, len: usize, seed: u64): u64 {
  return 0;
}
/** Bytes of streaming state (caller allocates it, 64-byte aligned). */
export function xxh3_state_size(): u32 {
  return 512;
}
/** Starts a streaming hash with `seed` in the state at `state`. */
export function xxh3_reset(state: usize, seed: u64): void {}
/** Feeds [ptr, ptr+len) into the streaming state; any segmentation gives the same digest. */
export function xxh3_update(state: usize, ptr: usize, len: usize): void {}
/** The digest of everything fed so far (the state stays usable: more updates may follow). */
export function xxh3_digest(state: usize): u64 {
  return 0;
}
