// Pure-TS twin of assembly/qemu-ram.ts (QEMU's RAM page records), written for clarity: the
// oracle of the differential tests and the baseline of the benchmarks. It shares no code with
// the kernel; the statuses and their meaning are the same (see assembly/qemu-ram.ts).
import { xbzrleDecodeReference } from "./xbzrle.js";

export interface ReferenceRamBlock {
  name: Uint8Array;
  size: number;
  /** The block's bytes, or null to check records only (verify). */
  memory: Uint8Array | null;
}

export interface ReferenceRamState {
  /** Block of the previous record, for CONTINUE (-1: none yet). */
  last: number;
  normal: number;
  zero: number;
  xbzrle: number;
}

export interface ReferenceRamResult {
  /** 0 need input, 1 EOS, negative: the kernel's error statuses. */
  status: number;
  /** Bytes consumed (up to the record at fault or the incomplete one). */
  used: number;
}

const ZERO = 0x02;
const MEM_SIZE = 0x04;
const PAGE = 0x08;
const EOS = 0x10;
const CONTINUE = 0x20;
const XBZRLE = 0x40;
const HOOK = 0x80;
const COMPRESS_PAGE = 0x100;
const MULTIFD_FLUSH = 0x200;

function sameName(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** Runs page records from `input` until EOS, an incomplete record or an error. */
export function qemuRamRunReference(input: Uint8Array, blocks: readonly ReferenceRamBlock[], state: ReferenceRamState, pageSize = 4096): ReferenceRamResult {
  const view = new DataView(input.buffer, input.byteOffset, input.byteLength);
  let pos = 0;
  for (;;) {
    if (input.length - pos < 8) return { status: 0, used: pos };
    const word = view.getBigUint64(pos);
    const flags = Number(word & BigInt(pageSize - 1));
    const offset = word - BigInt(flags);
    const kind = flags & ~CONTINUE;
    if (kind === EOS) return { status: 1, used: pos + 8 };
    if (kind === MEM_SIZE) return { status: -11, used: pos };
    if (kind === COMPRESS_PAGE) return { status: -8, used: pos };
    if (kind === MULTIFD_FLUSH) return { status: -9, used: pos };
    if (kind === HOOK) return { status: -10, used: pos };
    if (kind !== ZERO && kind !== PAGE && kind !== XBZRLE) return { status: -1, used: pos };

    let q = pos + 8;
    let block: number;
    if (flags & CONTINUE) {
      if (state.last < 0) return { status: -3, used: pos };
      block = state.last;
    } else {
      if (q >= input.length) return { status: 0, used: pos };
      const len = input[q]!;
      if (input.length - q - 1 < len) return { status: 0, used: pos };
      const name = input.subarray(q + 1, q + 1 + len);
      block = blocks.findIndex((b) => sameName(b.name, name));
      if (block < 0) return { status: -2, used: pos };
      q += 1 + len;
    }

    let payload: number;
    if (kind === ZERO) payload = 1;
    else if (kind === PAGE) payload = pageSize;
    else {
      if (input.length - q < 3) return { status: 0, used: pos };
      payload = 3 + view.getUint16(q + 1);
    }
    if (input.length - q < payload) return { status: 0, used: pos };

    const b = blocks[block]!;
    if (offset >= BigInt(b.size)) return { status: -4, used: pos };
    const at = Number(offset);
    if (kind === XBZRLE) {
      if (input[q] !== 1) return { status: -5, used: pos };
      const delta = input.subarray(q + 3, q + payload);
      if (delta.length > pageSize) return { status: -6, used: pos };
      // Decoded onto a copy: a malformed delta leaves the page alone, as the kernel does.
      const page = b.memory ? b.memory.slice(at, at + pageSize) : new Uint8Array(pageSize);
      try {
        xbzrleDecodeReference(delta, page);
      } catch {
        return { status: -7, used: pos };
      }
      b.memory?.set(page, at);
      state.xbzrle++;
    } else if (kind === ZERO) {
      b.memory?.fill(input[q]!, at, at + pageSize);
      state.zero++;
    } else {
      b.memory?.set(input.subarray(q, q + pageSize), at);
      state.normal++;
    }
    state.last = block;
    pos = q + payload;
  }
}
