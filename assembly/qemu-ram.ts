// QEMU's RAM page records (migration/ram.c, section "ram" version 4): the page loop of a QEMU
// migration stream, one call per batch of input.
//
// A record is a big-endian u64 (page offset in its block | flags in the bits below the page
// size), then, unless the CONTINUE flag says "same block as the previous record", the block name
// (u8 length, bytes), then the payload:
//   ZERO   0x02  u8 fill byte: the whole page is that byte
//   PAGE   0x08  one page of data
//   XBZRLE 0x40  u8 encoding (1), u16 length, XBZRLE delta against the page as it is now
//   EOS    0x10  end of this section's RAM data (no payload)
// Anything else in a page loop is refused with a status naming it (MEM_SIZE is the block list,
// read by the TS side at the start of the section; COMPRESS_PAGE, HOOK and MULTIFD_FLUSH belong
// to capabilities this reader does not decode).
//
// The context (QRAM_* offsets) and block table (QBLK_*) are laid out by src/qemu/ram-kernel.ts.
// Each block has a table of chunk pointers (chunk = 2^chunkShift bytes of the block): 0 means
// "never written, all zero", CHUNK_ON_DISK (1) "written out by the caller, not resident", any
// other value is a pointer to the chunk in this memory. A block whose table pointer is 0 is
// only checked, never written (verify). A page that needs a chunk that is not resident stops the
// loop with NEED_CHUNK (the caller allocates or reloads it and calls again); a zero page onto a
// chunk never written needs nothing. So memory follows the pages that arrive, whatever the
// block sizes claim.
//
// Statuses: 0 NEED_INPUT (the record at `pos` is incomplete), 1 EOS (`pos` is after it),
// 2 NEED_CHUNK (`needBlock`, `needChunk`; the record at `pos` is not applied yet), negative for a
// malformed record at `pos` (see below; `detail` carries the flags or the XBZRLE status).
import { bytesZero } from "./mem";
import { validate, xbzrle_decode } from "./xbzrle";

const FLAG_ZERO: u64 = 0x02;
const FLAG_MEM_SIZE: u64 = 0x04;
const FLAG_PAGE: u64 = 0x08;
const FLAG_EOS: u64 = 0x10;
const FLAG_CONTINUE: u64 = 0x20;
const FLAG_XBZRLE: u64 = 0x40;
const FLAG_HOOK: u64 = 0x80;
const FLAG_COMPRESS_PAGE: u64 = 0x100;
const FLAG_MULTIFD_FLUSH: u64 = 0x200;

const NEED_INPUT: i32 = 0;
const EOS: i32 = 1;
const NEED_CHUNK: i32 = 2;
const E_FLAGS: i32 = -1;
const E_UNKNOWN_BLOCK: i32 = -2;
const E_NO_BLOCK: i32 = -3;
const E_OFFSET: i32 = -4;
const E_XBZRLE_ENCODING: i32 = -5;
const E_XBZRLE_LENGTH: i32 = -6;
const E_XBZRLE_DELTA: i32 = -7;
const E_COMPRESS: i32 = -8;
const E_MULTIFD: i32 = -9;
const E_HOOK: i32 = -10;
const E_MEM_SIZE: i32 = -11;

const CHUNK_ON_DISK: u32 = 1;

// Context fields (byte offsets).
const QRAM_IN: usize = 0;
const QRAM_IN_LEN: usize = 4;
const QRAM_POS: usize = 8;
const QRAM_BLOCKS: usize = 12;
const QRAM_BLOCK_COUNT: usize = 16;
const QRAM_LAST_BLOCK: usize = 20;
const QRAM_PAGE_SIZE: usize = 24;
const QRAM_NEED_BLOCK: usize = 28;
const QRAM_NEED_CHUNK: usize = 32;
const QRAM_DETAIL: usize = 36;
const QRAM_NORMAL: usize = 40;
const QRAM_ZERO: usize = 48;
const QRAM_XBZRLE: usize = 56;
const QRAM_SIZE: usize = 64;

// Block entry fields.
const QBLK_NAME: usize = 0;
const QBLK_NAME_LEN: usize = 4;
const QBLK_USED: usize = 8;
const QBLK_CHUNKS: usize = 16;
const QBLK_CHUNK_SHIFT: usize = 20;
const QBLK_SIZE: usize = 32;

export function qemu_ram_context_size(): usize {
  return QRAM_SIZE;
}

export function qemu_ram_block_entry_size(): usize {
  return QBLK_SIZE;
}

/** Index of the block named by the `len` bytes at `name`, or -1. */
function findBlock(blocks: usize, count: u32, name: usize, len: u32): i32 {
  for (let b: u32 = 0; b < count; b++) {
    const entry = blocks + <usize>b * QBLK_SIZE;
    if (load<u32>(entry + QBLK_NAME_LEN) != len) continue;
    const other = <usize>load<u32>(entry + QBLK_NAME);
    let same = true;
    for (let k: usize = 0; k < <usize>len; k++) {
      if (load<u8>(other + k) != load<u8>(name + k)) {
        same = false;
        break;
      }
    }
    if (same) return <i32>b;
  }
  return -1;
}

/** Status for a record kind the loop does not take (flags without CONTINUE). */
function refusal(kind: u64): i32 {
  if (kind == FLAG_MEM_SIZE) return E_MEM_SIZE;
  if (kind == FLAG_COMPRESS_PAGE) return E_COMPRESS;
  if (kind == FLAG_MULTIFD_FLUSH) return E_MULTIFD;
  if (kind == FLAG_HOOK) return E_HOOK;
  return E_FLAGS;
}

/** Parses and applies page records from ctx's input until one of the statuses above. */
export function qemu_ram_run(ctx: usize): i32 {
  const input = <usize>load<u32>(ctx + QRAM_IN);
  const inLen = <usize>load<u32>(ctx + QRAM_IN_LEN);
  const blocks = <usize>load<u32>(ctx + QRAM_BLOCKS);
  const blockCount = load<u32>(ctx + QRAM_BLOCK_COUNT);
  const pageSize = <usize>load<u32>(ctx + QRAM_PAGE_SIZE);
  const pageMask = <u64>(pageSize - 1);
  let pos = <usize>load<u32>(ctx + QRAM_POS);
  let last = load<i32>(ctx + QRAM_LAST_BLOCK);
  let normal = load<u64>(ctx + QRAM_NORMAL);
  let zero = load<u64>(ctx + QRAM_ZERO);
  let xbzrle = load<u64>(ctx + QRAM_XBZRLE);
  let status: i32 = NEED_INPUT;

  while (true) {
    if (inLen - pos < 8) break;
    const word = bswap<u64>(load<u64>(input + pos));
    const flags = word & pageMask;
    const offset = word & ~pageMask;
    const kind = flags & ~FLAG_CONTINUE;
    if (kind == FLAG_EOS) {
      pos += 8;
      status = EOS;
      break;
    }
    if (kind != FLAG_ZERO && kind != FLAG_PAGE && kind != FLAG_XBZRLE) {
      store<u32>(ctx + QRAM_DETAIL, <u32>flags);
      status = refusal(kind);
      break;
    }
    let q = pos + 8;
    let block: i32;
    if ((flags & FLAG_CONTINUE) != 0) {
      if (last < 0) {
        status = E_NO_BLOCK;
        break;
      }
      block = last;
    } else {
      if (q >= inLen) break;
      const n = <usize>load<u8>(input + q);
      if (inLen - q - 1 < n) break;
      block = findBlock(blocks, blockCount, input + q + 1, <u32>n);
      if (block < 0) {
        status = E_UNKNOWN_BLOCK;
        break;
      }
      q += 1 + n;
    }
    // The payload must be whole before anything is checked against it.
    let payload: usize = 0;
    let delta: usize = 0;
    let deltaLen: usize = 0;
    if (kind == FLAG_ZERO) {
      payload = 1;
    } else if (kind == FLAG_PAGE) {
      payload = pageSize;
    } else {
      if (inLen - q < 3) break;
      deltaLen = <usize>bswap<u16>(load<u16>(input + q + 1));
      payload = 3 + deltaLen;
      delta = input + q + 3;
    }
    if (inLen - q < payload) break;

    const entry = blocks + <usize>block * QBLK_SIZE;
    if (offset >= load<u64>(entry + QBLK_USED)) {
      status = E_OFFSET;
      break;
    }
    if (kind == FLAG_XBZRLE) {
      if (load<u8>(input + q) != 1) {
        store<u32>(ctx + QRAM_DETAIL, <u32>load<u8>(input + q));
        status = E_XBZRLE_ENCODING;
        break;
      }
      if (deltaLen > pageSize) {
        status = E_XBZRLE_LENGTH;
        break;
      }
      const check = validate(delta, deltaLen, pageSize);
      if (check < 0) {
        store<u32>(ctx + QRAM_DETAIL, <u32>-check);
        status = E_XBZRLE_DELTA;
        break;
      }
    }

    const chunks = <usize>load<u32>(entry + QBLK_CHUNKS);
    if (chunks != 0) {
      const shift = <u64>load<u32>(entry + QBLK_CHUNK_SHIFT);
      const chunkIndex = <usize>(offset >> shift);
      const chunk = load<u32>(chunks + chunkIndex * 4);
      const fill = kind == FLAG_ZERO ? load<u8>(input + q) : <u8>0;
      const within = <usize>(offset & ((<u64>1 << shift) - 1));
      if (kind == FLAG_ZERO && chunk == 0 && fill == 0) {
        // Never written: already zero.
      } else if (chunk <= CHUNK_ON_DISK) {
        store<u32>(ctx + QRAM_NEED_BLOCK, <u32>block);
        store<u32>(ctx + QRAM_NEED_CHUNK, <u32>chunkIndex);
        status = NEED_CHUNK;
        break;
      } else {
        const page = <usize>chunk + within;
        if (kind == FLAG_ZERO) memory.fill(page, fill, pageSize);
        else if (kind == FLAG_PAGE) memory.copy(page, input + q, pageSize);
        else xbzrle_decode(delta, deltaLen, page, pageSize);
      }
    }
    if (kind == FLAG_ZERO) zero++;
    else if (kind == FLAG_PAGE) normal++;
    else xbzrle++;
    last = block;
    pos = q + payload;
  }

  store<u32>(ctx + QRAM_POS, <u32>pos);
  store<i32>(ctx + QRAM_LAST_BLOCK, last);
  store<u64>(ctx + QRAM_NORMAL, normal);
  store<u64>(ctx + QRAM_ZERO, zero);
  store<u64>(ctx + QRAM_XBZRLE, xbzrle);
  return status;
}

/**
 * Writes the page records of `len` bytes of a block (whole pages, starting at block offset
 * `offset`) into `out`: a ZERO record for a page of zeros, a PAGE record otherwise. The first
 * record carries the block name (`name`, `nameLen` bytes) unless `continued` is 1; the others
 * say CONTINUE. `out` needs room for len / pageSize * (9 + pageSize) + 256 bytes. Returns the
 * bytes written; the counts of zero pages go to `zeroCount` (a u32 cell).
 */
export function qemu_ram_write(
  src: usize,
  len: usize,
  pageSize: usize,
  offset: u64,
  name: usize,
  nameLen: usize,
  continued: u32,
  out: usize,
  zeroCount: usize,
): usize {
  let o: usize = 0;
  let zeros: u32 = 0;
  let first = continued == 0;
  for (let p: usize = 0; p + pageSize <= len; p += pageSize) {
    const page = src + p;
    const isZero = bytesZero(page, pageSize);
    let word = (offset + <u64>p) | (isZero ? FLAG_ZERO : FLAG_PAGE);
    if (!first) word |= FLAG_CONTINUE;
    store<u64>(out + o, bswap<u64>(word));
    o += 8;
    if (first) {
      store<u8>(out + o, <u8>nameLen);
      memory.copy(out + o + 1, name, nameLen);
      o += 1 + nameLen;
      first = false;
    }
    if (isZero) {
      store<u8>(out + o, 0);
      o += 1;
      zeros++;
    } else {
      memory.copy(out + o, page, pageSize);
      o += pageSize;
    }
  }
  store<u32>(zeroCount, zeros);
  return o;
}
