// Pure-TS CRC-32C (Castagnoli), byte-at-a-time. It exists to check the Wasm kernel against, so it
// is written for obviousness, not speed: one 256-entry table, one step per byte.

/** Reflected Castagnoli polynomial. */
const POLY = 0x82f63b78;

const TABLE: Uint32Array = (() => {
  const table = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ POLY : c >>> 1;
    table[i] = c >>> 0;
  }
  return table;
})();

/**
 * CRC32C of `data`, continuing `crc` (0 to start), so that
 * `crc32cReference(b, crc32cReference(a)) === crc32cReference(a ‖ b)`. Unsigned result.
 */
export function crc32cReference(data: Uint8Array, crc = 0): number {
  let c = ~crc >>> 0;
  for (let i = 0; i < data.length; i++) c = TABLE[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return ~c >>> 0;
}
