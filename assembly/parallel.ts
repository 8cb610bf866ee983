// Kernels for the worker pool (src/core/pool/): what lets pieces of one stream be encoded or
// checked on several threads and still give the bytes, verdicts and errors of one thread.
// encode_plan (in encode.ts, beside the encoder it mirrors) says where a region may be cut;
// here: walking record framing, chaining the stream digest over finished records, and the
// per-record work a decoder can have done ahead of it (checksums, LZ4 blocks).
import { FLAG_OPTIONAL, RECORD_HEADER, RECORD_TRAILER, TAG_LZ4 } from "./format";
import { chainDigest, recordChecksum } from "./checksum";
import { lz4_decompress, lz4_error_offset } from "./lz4";

/** Bytes of one precheck entry (see precheck_records). */
export const PRECHECK_ENTRY: usize = 32;

/**
 * The offset of the first record boundary at or after `stop` in [ptr, ptr+len), or, if the
 * records run out first, the end of the last complete record that frames correctly (flags,
 * payload limit): everything before the returned offset is whole records.
 */
export function frame_walk(ptr: usize, len: usize, maxPayload: u32, stop: usize): u32 {
  let pos: usize = 0;
  while (pos < stop && len - pos >= RECORD_HEADER) {
    const flags = load<u8>(ptr + pos, 1);
    const payload = <usize>load<u32>(ptr + pos, 4);
    if ((flags & ~FLAG_OPTIONAL) != 0 || payload > <usize>maxPayload) break;
    const size = RECORD_HEADER + payload + RECORD_TRAILER;
    if (len - pos < size) break;
    pos += size;
  }
  return <u32>pos;
}

/** The stream digest `digest` chained over every record in [ptr, ptr+len) (whole records). */
export function chain_records(digest: u64, ptr: usize, len: usize): u64 {
  let pos: usize = 0;
  let d = digest;
  while (len - pos >= RECORD_HEADER + RECORD_TRAILER) {
    const payload = <usize>load<u32>(ptr + pos, 4);
    d = chainDigest(d, load<u64>(ptr + pos + RECORD_HEADER + payload));
    pos += RECORD_HEADER + payload + RECORD_TRAILER;
  }
  return d;
}

/**
 * For each whole record of [ptr, ptr+len) (stream offset `streamPos`), writes a 32-byte entry
 * to `table`: u64 stream offset, u64 checksum computed over the record, u32 where its LZ4
 * block was decoded (0: not done), i32 lz4_decompress's result, u32 the LZ4 error offset.
 * A block is decoded (into `area`, up to `areaCap` bytes in all; with `keep` false each over
 * the last, for callers that only need the verdict) only for LZ4 records whose checksum
 * matches and whose declared length is at most `maxPayload`. Stops at the first record
 * that does not frame (the decoder reports it itself) or after `cap` entries; returns the count.
 */
export function precheck_records(
  ptr: usize,
  len: usize,
  streamPos: u64,
  alg: u8,
  maxPayload: u32,
  lz4: bool,
  table: usize,
  cap: u32,
  area: usize,
  areaCap: usize,
  keep: bool,
): u32 {
  let pos: usize = 0;
  let n: u32 = 0;
  let used: usize = 0;
  while (n < cap && len - pos >= RECORD_HEADER) {
    const rec = ptr + pos;
    const flags = load<u8>(rec, 1);
    const payload = <usize>load<u32>(rec, 4);
    if ((flags & ~FLAG_OPTIONAL) != 0 || payload > <usize>maxPayload) break;
    const size = RECORD_HEADER + payload + RECORD_TRAILER;
    if (len - pos < size) break;
    const sum = recordChecksum(alg, rec, RECORD_HEADER + payload);
    const entry = table + <usize>n * PRECHECK_ENTRY;
    store<u64>(entry, streamPos + <u64>pos);
    store<u64>(entry, sum, 8);
    store<u32>(entry, 0, 16);
    store<i32>(entry, 0, 20);
    store<u32>(entry, 0, 24);
    if (lz4 && load<u8>(rec) == TAG_LZ4 && payload >= 5 && sum == load<u64>(rec + RECORD_HEADER + payload)) {
      const declared = <usize>load<u32>(rec + RECORD_HEADER);
      if (declared <= <usize>maxPayload && areaCap - used >= declared) {
        const dst = area + used;
        const status = lz4_decompress(rec + RECORD_HEADER + 4, payload - 4, dst, declared);
        store<u32>(entry, <u32>dst, 16);
        store<i32>(entry, status, 20);
        store<u32>(entry, lz4_error_offset(), 24);
        if (keep) used += (declared + 7) & ~(<usize>7);
      }
    }
    n++;
    pos += size;
  }
  return n;
}
