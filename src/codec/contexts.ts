// Field offsets of the context blocks that the encoder and decoder kernels read and update
// (mirrors assembly/encode.ts and assembly/decode.ts; the kernels own the semantics).
import { core } from "../core/instance.js";

export const Enc = {
  CUR: 0,
  SHADOW: 4,
  BITMAP: 8,
  LEN: 12,
  PAGE: 16,
  CURSOR: 20,
  OUT: 24,
  OUTCAP: 28,
  OUTLEN: 32,
  MAXPAYLOAD: 36,
  SEQ: 40,
  REGION: 44,
  ALG: 46,
  MODE: 47,
  OFFSET: 48,
  DIGEST: 56,
  PAGES_RAW: 64,
  PAGES_ZERO: 68,
  PAGES_DELTA: 72,
  PAGES_CLEAN: 76,
  RECORDS: 80,
  SCRATCH: 84,
  REC_TAG: 88,
  REC_REGION: 90,
  REC_PAYLOAD: 92,
  REC_PAGES: 96,
  REC_OFFSET: 104,
  LZ4_SCRATCH: 112,
  PAGES_LZ4: 116,
  RECORDS_LZ4: 120,
  LZ4_PACKED: 128,
  LZ4_COVERED: 136,
} as const;

export const EncMode = { DELTA: 1, UPDATE_SHADOW: 2, SKIP_CLEAN: 4, LZ4: 8 } as const;
export const ENCODE_OUTPUT_FULL = 1;

export const Dec = {
  IN: 0,
  INLEN: 4,
  POS: 8,
  REGIONS: 12,
  NREGIONS: 16,
  ALG: 18,
  SHIFT: 19,
  MAXPAYLOAD: 20,
  SEQ: 24,
  MODE: 28,
  DIGEST: 32,
  STREAMPOS: 40,
  ERR_RECORD: 48,
  NEEDED: 52,
  ERR_OFFSET: 56,
  CONFIGS: 64,
  ROUNDS: 68,
  R_TAG: 72,
  R_FLAGS: 73,
  R_REGION: 74,
  R_LEN: 76,
  R_PAGES: 80,
  R_PAYLOAD: 84,
  R_OFFSET: 88,
  PAGES_RAW: 96,
  PAGES_ZERO: 100,
  PAGES_DELTA: 104,
  REC_RAW: 108,
  REC_ZERO: 112,
  REC_DELTA: 116,
  REC_SKIPPED: 120,
  CHUNK_SHIFT: 128,
  APPLIED: 136,
  BUDGET: 144,
  BUDGET_ROUND: 152,
  COPIED: 160,
  LZ4_SCRATCH: 124,
  R_PACKED: 180,
  PAGES_LZ4: 184,
  REC_LZ4: 188,
  LZ4_BYTES: 192,
  PRE: 200,
  PRE_COUNT: 204,
  PRE_NEXT: 208,
} as const;

export const Region = { SIZE: 0, STAGING: 8, HAVE: 12, PAGES: 16, ZERO: 20, BASE: 24, CHUNKS: 28 } as const;
export const DecMode = { APPLY: 1, ZERO_RUNS: 2, ENDED: 4, LZ4: 16 } as const;
export const DECODE_NEED_MORE = 0;
export const DECODE_RECORD = 1;
export const DECODE_END = 2;
export const DECODE_NEED_STAGING = 3;
export const DECODE_NEED_SCRATCH = 4;

/**
 * `view` now: views of core memory are detached whenever it grows (any allocation may grow it),
 * so one that lives there is rebuilt from its offset; other arrays are returned as they are.
 */
export function stableView(view: Uint8Array): () => Uint8Array {
  const c = core();
  if (!c.owns(view)) return () => view;
  const { byteOffset, length } = view;
  return () => (c.owns(view) ? view : new Uint8Array(c.memory.buffer, byteOffset, length));
}

/** Little-endian accessors over a context block at `ptr` in core memory. */
export class ContextView {
  readonly #memory: WebAssembly.Memory;
  readonly ptr: number;
  #view: DataView;

  constructor(memory: WebAssembly.Memory, ptr: number) {
    this.#memory = memory;
    this.ptr = ptr;
    this.#view = new DataView(memory.buffer);
  }

  get #dv(): DataView {
    if (this.#view.buffer !== this.#memory.buffer) this.#view = new DataView(this.#memory.buffer);
    return this.#view;
  }

  u8(field: number): number {
    return this.#dv.getUint8(this.ptr + field);
  }
  u16(field: number): number {
    return this.#dv.getUint16(this.ptr + field, true);
  }
  u32(field: number): number {
    return this.#dv.getUint32(this.ptr + field, true);
  }
  u64(field: number): bigint {
    return this.#dv.getBigUint64(this.ptr + field, true);
  }
  setU8(field: number, value: number): void {
    this.#dv.setUint8(this.ptr + field, value);
  }
  setU16(field: number, value: number): void {
    this.#dv.setUint16(this.ptr + field, value, true);
  }
  setU32(field: number, value: number): void {
    this.#dv.setUint32(this.ptr + field, value, true);
  }
  setU64(field: number, value: bigint): void {
    this.#dv.setBigUint64(this.ptr + field, value, true);
  }
}
