// PLACEHOLDER (being written): page scans.
export function scan_dirty(cur: usize, shadow: usize, len: usize, pageSize: u32, bitmap: usize, refresh: bool): u32 {
  return 0;
}
export function scan_zero(ptr: usize, len: usize, pageSize: u32, bitmap: usize): u32 {
  return 0;
}
export function scan_hash(ptr: usize, len: usize, pageSize: u32, hashes: usize, bitmap: usize): u32 {
  return 0;
}
