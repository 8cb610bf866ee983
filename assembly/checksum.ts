import { ALG_CRC32C } from "./format";
import { crc32c } from "./crc32c";
import { chainScratch, xxh3_64 } from "./xxh3";

/** A record's checksum with the stream's algorithm (CRC32C zero-extended to 64 bits). */
@inline
export function recordChecksum(alg: u8, ptr: usize, len: usize): u64 {
  return alg == ALG_CRC32C ? <u64>crc32c(ptr, len, 0) : xxh3_64(ptr, len, 0);
}

/** One step of the stream digest: XXH3-64(le64(digest) ‖ le64(checksum)), whatever the algorithm. */
export function chainDigest(digest: u64, checksum: u64): u64 {
  const input = chainScratch();
  store<u64>(input, digest);
  store<u64>(input, checksum, 8);
  return xxh3_64(input, 16, 0);
}

/** Digest step exported for the TS side, which frames nothing itself but checks END in tests. */
export function chain_digest(digest: u64, checksum: u64): u64 {
  return chainDigest(digest, checksum);
}
