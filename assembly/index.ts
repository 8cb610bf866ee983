// The Wasm core: every export works on raw pointers into this module's memory and returns a
// count, a length or a status code. Nothing here allocates or throws; the TS side (src/core/)
// owns the memory layout and turns statuses into typed errors.

export function heap_base(): usize {
  return __heap_base;
}

export { xxh3_64, xxh3_state_size, xxh3_reset, xxh3_update, xxh3_digest } from "./xxh3";
export { crc32c } from "./crc32c";
export { scan_dirty, scan_zero, scan_hash } from "./scan";
export { xbzrle_encode, xbzrle_decode } from "./xbzrle";
