// The TS side of assembly/qemu-ram.ts: the kernel's context and block table in core memory, and
// the RAM image the pages land in (chunks allocated as pages arrive, optionally spilled to a
// file). One kernel call runs over a whole batch of input; JS acts only between batches and
// when a chunk must be made resident.
import { MigrationError } from "../core/errors.js";
import { type Core, guarded } from "../core/instance.js";
import { latin1Bytes } from "./latin1.js";

/** A RAM block as the stream's block list declares it. */
export interface RamBlock {
  name: string;
  /** used_length: a claim until pages arrive (nothing is allocated for it up front). */
  size: number;
}

/** Where chunks go when the resident budget is reached, and come back from (positional I/O). */
export interface RamSpill {
  write(block: number, offset: number, bytes: Uint8Array): void;
  read(block: number, offset: number, into: Uint8Array): void;
}

/**
 * What becomes of the pages: `check` validates every record and keeps nothing (XBZRLE deltas are
 * checked against the page size, not applied); `memory` keeps the image in core memory; a spill
 * keeps at most `residentBytes` of it in memory and writes the rest through `spill`.
 */
export type RamMode = { kind: "check" } | { kind: "memory" } | { kind: "spill"; spill: RamSpill; residentBytes: number };

/** Kernel statuses (assembly/qemu-ram.ts). */
export const RamStatus = { NEED_INPUT: 0, EOS: 1, NEED_CHUNK: 2 } as const;

// Context and block-entry offsets, as assembly/qemu-ram.ts lays them out.
const C_IN = 0;
const C_IN_LEN = 4;
const C_POS = 8;
const C_BLOCKS = 12;
const C_BLOCK_COUNT = 16;
const C_LAST_BLOCK = 20;
const C_PAGE_SIZE = 24;
const C_NEED_BLOCK = 28;
const C_NEED_CHUNK = 32;
const C_DETAIL = 36;
const C_NORMAL = 40;
const C_ZERO = 48;
const C_XBZRLE = 56;
const B_NAME = 0;
const B_NAME_LEN = 4;
const B_USED = 8;
const B_CHUNKS = 16;
const B_CHUNK_SHIFT = 20;

const CHUNK_ON_DISK = 1;
/** Chunks of at most 1 MiB: small enough that a sparse guest stays small, large enough for I/O. */
const MAX_CHUNK_SHIFT = 20;

const XBZRLE_PROBLEMS: Readonly<Record<number, string>> = {
  1: "truncated",
  2: "a length longer than 2 bytes",
  3: "a zero-length run",
  4: "a run past the end of the page",
};

/** Text of a negative kernel status; `detail` is the flags or the XBZRLE status. */
export function ramProblem(status: number, detail: number): { code: "EBADMSG" | "EPROTONOSUPPORT"; message: string } {
  const hex = `0x${detail.toString(16)}`;
  switch (status) {
    case -1:
      return { code: "EBADMSG", message: `RAM record with unknown flags ${hex}` };
    case -2:
      return { code: "EBADMSG", message: "RAM record for a block the block list does not declare" };
    case -3:
      return { code: "EBADMSG", message: "RAM record continues a block, but no block came before it" };
    case -4:
      return { code: "EBADMSG", message: "RAM record offset past the end of its block" };
    case -5:
      return { code: "EBADMSG", message: `XBZRLE page with unknown encoding ${hex}` };
    case -6:
      return { code: "EBADMSG", message: "XBZRLE page longer than a page" };
    case -7:
      return { code: "EBADMSG", message: `malformed XBZRLE delta: ${XBZRLE_PROBLEMS[detail] ?? "invalid"}` };
    case -8:
      return { code: "EPROTONOSUPPORT", message: "zlib-compressed pages (the compress capability) are not decoded" };
    case -9:
      return { code: "EPROTONOSUPPORT", message: "multifd streams (MULTIFD_FLUSH records) are not decoded" };
    case -10:
      return { code: "EPROTONOSUPPORT", message: "RDMA (RAM_SAVE_FLAG_HOOK records) is not decoded" };
    case -11:
      return { code: "EBADMSG", message: "RAM block list (MEM_SIZE) outside the start of the RAM section" };
    default:
      return { code: "EBADMSG", message: `RAM record refused (status ${status})` };
  }
}

function chunkShift(size: number): number {
  let shift = 12;
  while (shift < MAX_CHUNK_SHIFT && 2 ** shift < size) shift++;
  return shift;
}

/** The kernel's context, block table and, unless checking only, the chunked RAM image. */
export class RamKernel {
  readonly blocks: readonly RamBlock[];
  readonly #core: Core;
  readonly #mode: RamMode;
  readonly #ctx: number;
  readonly #table: number;
  readonly #names: number;
  /** Per block: the pointer to its chunk table (0 when checking only), and its chunk shift. */
  readonly #chunkTables: number[] = [];
  readonly #shifts: number[] = [];
  /** Resident chunks, in the order they became resident. */
  readonly #resident: Array<{ block: number; chunk: number; ptr: number }> = [];
  #residentBytes = 0;
  #released = false;

  constructor(blocks: readonly RamBlock[], mode: RamMode, pageSize: number) {
    this.blocks = blocks;
    this.#mode = mode;
    this.#core = guarded((c) => c);
    const c = this.#core;
    const x = c.exports;
    const entry = x.qemu_ram_block_entry_size();
    const names = blocks.map((b) => latin1Bytes(b.name));
    this.#ctx = c.allocZeroed(x.qemu_ram_context_size());
    this.#table = c.allocZeroed(entry * Math.max(blocks.length, 1));
    this.#names = c.alloc(names.reduce((n, b) => n + b.length, 0));
    for (const block of blocks) {
      const shift = chunkShift(block.size);
      const tableBytes = mode.kind === "check" ? 0 : Math.ceil(block.size / 2 ** shift) * 4;
      this.#shifts.push(shift);
      this.#chunkTables.push(tableBytes === 0 ? 0 : c.allocZeroed(tableBytes));
    }
    const u8 = c.u8;
    const dv = new DataView(c.memory.buffer);
    let namePtr = this.#names;
    for (const [i, block] of blocks.entries()) {
      const e = this.#table + i * entry;
      u8.set(names[i]!, namePtr);
      dv.setUint32(e + B_NAME, namePtr, true);
      dv.setUint32(e + B_NAME_LEN, names[i]!.length, true);
      dv.setBigUint64(e + B_USED, BigInt(block.size), true);
      dv.setUint32(e + B_CHUNKS, this.#chunkTables[i]!, true);
      dv.setUint32(e + B_CHUNK_SHIFT, this.#shifts[i]!, true);
      namePtr += names[i]!.length;
    }
    dv.setUint32(this.#ctx + C_BLOCKS, this.#table, true);
    dv.setUint32(this.#ctx + C_BLOCK_COUNT, blocks.length, true);
    dv.setInt32(this.#ctx + C_LAST_BLOCK, -1, true);
    dv.setUint32(this.#ctx + C_PAGE_SIZE, pageSize, true);
  }

  get counts(): { normal: number; zero: number; xbzrle: number } {
    const dv = new DataView(this.#core.memory.buffer);
    return {
      normal: Number(dv.getBigUint64(this.#ctx + C_NORMAL, true)),
      zero: Number(dv.getBigUint64(this.#ctx + C_ZERO, true)),
      xbzrle: Number(dv.getBigUint64(this.#ctx + C_XBZRLE, true)),
    };
  }

  /**
   * Runs page records from `len` bytes at `ptr` (core memory) until the section's EOS, an
   * incomplete record or an error. Chunks are made resident as the kernel asks for them.
   * Returns the status (NEED_INPUT or EOS; errors too, with `detail`) and the bytes consumed.
   */
  run(ptr: number, len: number): { status: number; used: number; detail: number } {
    const ctx = this.#ctx;
    let used = 0;
    for (;;) {
      const dv = new DataView(this.#core.memory.buffer);
      dv.setUint32(ctx + C_IN, ptr + used, true);
      dv.setUint32(ctx + C_IN_LEN, len - used, true);
      dv.setUint32(ctx + C_POS, 0, true);
      const status = guarded((c) => c.exports.qemu_ram_run(ctx));
      // Allocations grow the memory and detach the old buffer: read through a fresh view.
      const after = new DataView(this.#core.memory.buffer);
      used += after.getUint32(ctx + C_POS, true);
      if (status !== RamStatus.NEED_CHUNK) return { status, used, detail: after.getUint32(ctx + C_DETAIL, true) };
      this.#makeResident(after.getUint32(ctx + C_NEED_BLOCK, true), after.getUint32(ctx + C_NEED_CHUNK, true));
    }
  }

  #makeResident(block: number, chunk: number): void {
    const mode = this.#mode;
    const shift = this.#shifts[block]!;
    const size = Math.min(2 ** shift, this.blocks[block]!.size - chunk * 2 ** shift);
    if (mode.kind === "spill" && this.#residentBytes + size > mode.residentBytes) this.flush();
    const c = this.#core;
    const slot = this.#chunkTables[block]! + chunk * 4;
    const state = new DataView(c.memory.buffer).getUint32(slot, true);
    const ptr = c.allocZeroed(2 ** shift);
    if (state === CHUNK_ON_DISK && mode.kind === "spill") mode.spill.read(block, chunk * 2 ** shift, c.u8.subarray(ptr, ptr + size));
    new DataView(c.memory.buffer).setUint32(slot, ptr, true);
    this.#resident.push({ block, chunk, ptr });
    this.#residentBytes += 2 ** shift;
  }

  /** Writes every resident chunk through the spill and frees it (spill mode only). */
  flush(): void {
    const mode = this.#mode;
    if (mode.kind !== "spill") return;
    const c = this.#core;
    for (const { block, chunk, ptr } of this.#resident) {
      const shift = this.#shifts[block]!;
      const size = Math.min(2 ** shift, this.blocks[block]!.size - chunk * 2 ** shift);
      mode.spill.write(block, chunk * 2 ** shift, c.u8.subarray(ptr, ptr + size));
      new DataView(c.memory.buffer).setUint32(this.#chunkTables[block]! + chunk * 4, CHUNK_ON_DISK, true);
      c.free(ptr);
    }
    this.#resident.length = 0;
    this.#residentBytes = 0;
  }

  /** Bytes of RAM image held in memory now. */
  get residentBytes(): number {
    return this.#residentBytes;
  }

  /** A copy of `length` bytes of a block from `offset` (memory mode): zeros where nothing came. */
  read(block: number, offset = 0, length = this.blocks[block]!.size - offset): Uint8Array {
    if (this.#mode.kind !== "memory") throw new MigrationError("EINVAL", "the RAM image is kept only by a reader in memory mode");
    const out = new Uint8Array(length);
    const shift = this.#shifts[block]!;
    const chunkSize = 2 ** shift;
    const c = this.#core;
    const dv = new DataView(c.memory.buffer);
    for (let at = offset; at < offset + length; ) {
      const chunk = Math.floor(at / chunkSize);
      const within = at - chunk * chunkSize;
      const take = Math.min(chunkSize - within, offset + length - at);
      const ptr = dv.getUint32(this.#chunkTables[block]! + chunk * 4, true);
      if (ptr > CHUNK_ON_DISK) out.set(c.u8.subarray(ptr + within, ptr + within + take), at - offset);
      at += take;
    }
    return out;
  }

  /** Frees everything in core memory (the spill keeps what was written to it). */
  release(): void {
    if (this.#released) return;
    this.#released = true;
    const c = this.#core;
    for (const { ptr } of this.#resident) c.free(ptr);
    this.#resident.length = 0;
    for (const table of this.#chunkTables) if (table !== 0) c.free(table);
    c.free(this.#ctx);
    c.free(this.#table);
    c.free(this.#names);
  }
}
