// PLACEHOLDER (being written): XBZRLE.
export function xbzrle_encode(oldPage: usize, newPage: usize, len: usize, out: usize, limit: usize): i32 {
  return 0;
}
export function xbzrle_decode(delta: usize, deltaLen: usize, page: usize, pageLen: usize): i32 {
  return 0;
}
