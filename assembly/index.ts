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
export { chain_digest } from "./checksum";
export { encode_context_size, encode_lz4_scratch_size, encode_window, encode_flush, frame_record } from "./encode";
export { decode_context_size, region_entry_size, decode_window, first_missing, apply_delta_run } from "./decode";
export { bitmap_set_range, bitmap_clear_range, bitmap_or, bitmap_count } from "./bitmap";
export { lz4_compress, lz4_decompress, lz4_error_offset, lz4_table_size, lz4_bound } from "./lz4";
export { qemu_ram_context_size, qemu_ram_block_entry_size, qemu_ram_run, qemu_ram_write } from "./qemu-ram";
export { thread_scratch_size, set_thread_scratch } from "./xxh3";
export { encode_plan } from "./encode";
export { frame_walk, chain_records, precheck_records } from "./parallel";
