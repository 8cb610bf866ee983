// LZ4 blocks (the lz4 project's block format, no frame), compressed and decompressed by the
// Wasm core. Interoperable both ways with any LZ4 implementation: a block from here decodes
// with liblz4 or lz4_flex, and any valid block decodes here. Inputs that do not live in core
// memory are staged through the core's scratch block.
import { MigrationError } from "./errors.js";
import { guarded } from "./instance.js";

/** The kernel's decoder statuses (assembly/lz4.ts), as text for error messages. */
export const LZ4_PROBLEMS: Readonly<Record<number, string>> = {
  [-1]: "truncated sequence",
  [-2]: "match offset 0",
  [-3]: "match offset before the output's start",
  [-4]: "literals past the block's end",
  [-5]: "literals past the declared size",
  [-6]: "match past the declared size",
  [-7]: "block decodes to fewer bytes than declared",
};

/** Largest input handled: lengths travel as i32 through the Wasm ABI. */
const MAX_INPUT = 0x7000_0000;

function alignUp(value: number): number {
  return Math.ceil(value / 64) * 64;
}

/** Largest block `len` bytes can compress to (all literals, with length bytes and token). */
export function lz4Bound(len: number): number {
  return len + Math.floor(len / 255) + 16;
}

/** Compresses `data` into a raw LZ4 block (a fresh array owned by the caller). */
export function lz4CompressBlock(data: Uint8Array): Uint8Array {
  if (!(data instanceof Uint8Array)) throw new MigrationError("EINVAL", "lz4: data must be a Uint8Array");
  const len = data.length;
  if (len > MAX_INPUT) throw new MigrationError("EINVAL", `lz4: input of ${len} bytes is too large`);
  return guarded((c) => {
    const inside = c.owns(data) ? data.byteOffset : -1;
    const tableSize = c.exports.lz4_table_size();
    const bound = lz4Bound(len);
    const srcAt = tableSize;
    const outAt = srcAt + (inside < 0 ? alignUp(len) : 0);
    const base = c.scratch(outAt + bound);
    const u8 = c.u8;
    const src = inside >= 0 ? inside : base + srcAt;
    if (inside < 0) u8.set(data, src);
    const n = c.exports.lz4_compress(src, len, base + outAt, bound, base, 0);
    if (n < 0) throw new MigrationError("EFAULT", `lz4: compressor returned ${n} within its bound`);
    const block = new Uint8Array(n);
    block.set(u8.subarray(base + outAt, base + outAt + n));
    return block;
  });
}

/**
 * Decodes a raw LZ4 block that must decode to exactly `size` bytes.
 *
 * @throws MigrationError EBADMSG when the block is malformed (offset 0 or before the output's
 *   start, a length past either end, a truncated sequence, another decoded length); `byteOffset`
 *   is the block offset of the element at fault. EINVAL for a bad `size`.
 */
export function lz4DecompressBlock(block: Uint8Array, size: number): Uint8Array {
  if (!(block instanceof Uint8Array)) throw new MigrationError("EINVAL", "lz4: block must be a Uint8Array");
  if (!Number.isSafeInteger(size) || size < 0 || size > MAX_INPUT) {
    throw new MigrationError("EINVAL", `lz4: invalid decoded size ${size}`);
  }
  if (block.length > MAX_INPUT) throw new MigrationError("EINVAL", `lz4: block of ${block.length} bytes is too large`);
  // A block cannot expand more than 255x (a length byte adds at most 255 bytes): a declared size
  // beyond that is refused before any memory is reserved for it.
  if (size > block.length * 255 + 16) {
    throw new MigrationError("EBADMSG", `lz4: a block of ${block.length} bytes cannot decode to ${size} bytes`, {
      byteOffset: block.length,
    });
  }
  const result = guarded((c) => {
    const inside = c.owns(block) ? block.byteOffset : -1;
    const outAt = inside < 0 ? alignUp(block.length) : 0;
    const base = c.scratch(outAt + size);
    const u8 = c.u8;
    const src = inside >= 0 ? inside : base;
    if (inside < 0) u8.set(block, src);
    const status = c.exports.lz4_decompress(src, block.length, base + outAt, size);
    if (status < 0) return { status, offset: c.exports.lz4_error_offset() >>> 0 };
    const out = new Uint8Array(size);
    out.set(u8.subarray(base + outAt, base + outAt + size));
    return out;
  });
  if (result instanceof Uint8Array) return result;
  const problem = LZ4_PROBLEMS[result.status] ?? `status ${result.status}`;
  throw new MigrationError("EBADMSG", `lz4: malformed block at byte ${result.offset}: ${problem}`, {
    byteOffset: result.offset,
  });
}
