import { MigrationError } from "./errors.js";
import { WASM_BASE64, WASM_SHARED_BASE64 } from "./wasm.generated.js";

/**
 * The ABI of assembly/index.ts. Pointers and lengths are byte offsets into `memory` (u32 on the
 * Wasm side; values >= 2^31 arrive as negative numbers and are fixed with `>>> 0`). No kernel
 * throws: each returns a count, a length or a negative status.
 */
export interface CoreExports {
  readonly memory: WebAssembly.Memory;
  heap_base(): number;
  xxh3_64(ptr: number, len: number, seed: bigint): bigint;
  xxh3_state_size(): number;
  xxh3_reset(state: number, seed: bigint): void;
  xxh3_update(state: number, ptr: number, len: number): void;
  xxh3_digest(state: number): bigint;
  crc32c(ptr: number, len: number, crc: number): number;
  scan_dirty(cur: number, shadow: number, len: number, pageSize: number, bitmap: number, refresh: number): number;
  scan_zero(ptr: number, len: number, pageSize: number, bitmap: number): number;
  scan_hash(ptr: number, len: number, pageSize: number, hashes: number, bitmap: number): number;
  xbzrle_encode(oldPage: number, newPage: number, len: number, out: number, limit: number): number;
  xbzrle_decode(delta: number, deltaLen: number, page: number, pageLen: number): number;
  chain_digest(digest: bigint, checksum: bigint): bigint;
  encode_context_size(): number;
  encode_lz4_scratch_size(maxPayload: number): number;
  encode_window(ctx: number): number;
  encode_flush(ctx: number): void;
  frame_record(ctx: number, tag: number, flags: number, payload: number): number;
  decode_context_size(): number;
  region_entry_size(): number;
  decode_window(ctx: number): number;
  first_missing(regions: number, count: number): bigint;
  apply_delta_run(payload: number, count: number, pages: number, shift: number, covered: number): number;
  bitmap_set_range(map: number, first: number, count: number): number;
  bitmap_clear_range(map: number, first: number, count: number): void;
  bitmap_or(dst: number, src: number, bytes: number): void;
  bitmap_count(map: number, bits: number): number;
  lz4_compress(src: number, len: number, dst: number, cap: number, table: number, bailAfter: number): number;
  lz4_decompress(src: number, srcLen: number, dst: number, dstLen: number): number;
  lz4_error_offset(): number;
  lz4_table_size(): number;
  lz4_bound(len: number): number;
  qemu_ram_context_size(): number;
  qemu_ram_block_entry_size(): number;
  qemu_ram_run(ctx: number): number;
  qemu_ram_write(
    src: number,
    len: number,
    pageSize: number,
    offset: bigint,
    name: number,
    nameLen: number,
    continued: number,
    out: number,
    zeroCount: number,
  ): number;
  thread_scratch_size(): number;
  set_thread_scratch(ptr: number): void;
  encode_plan(ctx: number, stop: number): void;
  frame_walk(ptr: number, len: number, maxPayload: number, stop: number): number;
  chain_records(digest: bigint, ptr: number, len: number): bigint;
  precheck_records(
    ptr: number,
    len: number,
    streamPos: bigint,
    alg: number,
    maxPayload: number,
    lz4: number,
    table: number,
    cap: number,
    area: number,
    areaCap: number,
    keep: number,
  ): number;
}

const WASM_PAGE = 65536;
/** Allocations are aligned to a cache line, which also suits v128 loads. */
const ALIGN = 64;

function decodeBase64(text: string): Uint8Array {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

let compiled: WebAssembly.Module | undefined;

/** The compiled module, shared by every instance (compiling is the expensive part). */
export function coreModule(): WebAssembly.Module {
  compiled ??= new WebAssembly.Module(decodeBase64(WASM_BASE64) as Uint8Array<ArrayBuffer>);
  return compiled;
}

let compiledShared: WebAssembly.Module | undefined;

/** The core built over an imported shared memory, for the worker pool (src/core/pool/). */
export function sharedCoreModule(): WebAssembly.Module {
  compiledShared ??= new WebAssembly.Module(decodeBase64(WASM_SHARED_BASE64) as Uint8Array<ArrayBuffer>);
  return compiledShared;
}

/**
 * One instance of the core with its memory and a first-fit allocator over that memory. The
 * allocator lives in TS so that the Wasm side never allocates and so never traps on exhaustion.
 */
export class Core {
  readonly exports: CoreExports;
  /** Bumped each time a trap forces a new instance; blocks of an older generation are dead. */
  readonly generation: number;
  #view: Uint8Array;
  #top: number;
  /** Free ranges as [start, end) pairs, sorted by start and never adjacent. */
  readonly #free: Array<[number, number]> = [];
  readonly #sizes = new Map<number, number>();
  #scratchPtr = 0;
  #scratchSize = 0;
  /** Memory from here up was never handed out, so it still holds the zeros Wasm gave it. */
  #untouched: number;

  /** `memory`: run the shared build over this shared memory (the worker pool's core). */
  constructor(generation: number, memory?: WebAssembly.Memory) {
    const instance = memory ? new WebAssembly.Instance(sharedCoreModule(), { env: { memory } }) : new WebAssembly.Instance(coreModule(), {});
    this.exports = instance.exports as unknown as CoreExports;
    this.generation = generation;
    this.#view = new Uint8Array(this.exports.memory.buffer);
    this.#top = alignUp(this.exports.heap_base() >>> 0, ALIGN);
    this.#untouched = this.#top;
  }

  get memory(): WebAssembly.Memory {
    return this.exports.memory;
  }

  /** A view of the whole memory; growth detaches old views, so take it again after allocating. */
  get u8(): Uint8Array {
    if (this.#view.buffer !== this.exports.memory.buffer) this.#view = new Uint8Array(this.exports.memory.buffer);
    return this.#view;
  }

  /** True if `data` is a view into this instance's memory (so kernels can read it in place). */
  owns(data: Uint8Array): boolean {
    return data.buffer === this.exports.memory.buffer;
  }

  /** Allocates `size` bytes (contents unspecified) and returns the pointer. */
  alloc(size: number): number {
    if (!Number.isSafeInteger(size) || size < 0) throw new MigrationError("EINVAL", `invalid allocation size ${size}`);
    const want = alignUp(Math.max(size, 1), ALIGN);
    for (let i = 0; i < this.#free.length; i++) {
      const range = this.#free[i]!;
      const [start, end] = range;
      if (end - start < want) continue;
      if (end - start === want) this.#free.splice(i, 1);
      else range[0] = start + want;
      this.#sizes.set(start, want);
      return start;
    }
    const start = this.#top;
    try {
      this.#ensure(start + want);
    } catch (error) {
      // Memory kept for reuse (staging blocks) must never be why an allocation fails.
      if (!this.#reclaim()) throw error;
      return this.alloc(size);
    }
    this.#top = start + want;
    this.#untouched = Math.max(this.#untouched, this.#top);
    this.#sizes.set(start, want);
    return start;
  }

  /**
   * Allocates `size` zero bytes. Only the part that was ever handed out before is cleared:
   * fresh memory is zero already, and touching it twice would double the page faults of a
   * large block.
   */
  allocZeroed(size: number): number {
    const untouched = this.#untouched;
    const ptr = this.alloc(size);
    if (ptr < untouched) this.u8.fill(0, ptr, Math.min(ptr + size, untouched));
    return ptr;
  }

  /**
   * Allocates `size` bytes without touching them, and says whether they are zero (the block
   * lies wholly in memory never handed out before): staging that stays untouched costs no RSS.
   */
  allocReporting(size: number): { ptr: number; zeroed: boolean } {
    const untouched = this.#untouched;
    const ptr = this.alloc(size);
    return { ptr, zeroed: ptr >= untouched };
  }

  readonly #reclaimers = new Set<() => boolean>();

  /**
   * Registers `reclaim`, called when memory cannot grow: it frees blocks kept for reuse and
   * says whether it freed any (the allocation is then retried).
   */
  onReclaim(reclaim: () => boolean): void {
    this.#reclaimers.add(reclaim);
  }

  #reclaim(): boolean {
    let freed = false;
    for (const reclaim of this.#reclaimers) freed = reclaim() || freed;
    return freed;
  }

  /** Returns a block to the allocator. Unknown pointers are ignored (double free is harmless). */
  free(ptr: number): void {
    const size = this.#sizes.get(ptr);
    if (size === undefined) return;
    this.#sizes.delete(ptr);
    if (ptr === this.#scratchPtr) this.#scratchSize = 0;
    let start = ptr;
    let end = ptr + size;
    const free = this.#free;
    let i = 0;
    while (i < free.length && free[i]![0] < start) i++;
    const before = free[i - 1];
    const after = free[i];
    if (before && before[1] === start) {
      start = before[0];
      free.splice(--i, 1);
    }
    if (after && after[0] === end) {
      end = after[1];
      free.splice(i, 1);
    }
    if (end === this.#top) this.#top = start;
    else free.splice(i, 0, [start, end]);
  }

  /**
   * A reusable block of at least `size` bytes for short-lived kernel inputs and outputs. Its
   * contents do not survive the next call to scratch() by anyone.
   */
  scratch(size: number): number {
    if (this.#scratchSize < size) {
      if (this.#scratchSize > 0) this.free(this.#scratchPtr);
      this.#scratchSize = 0;
      const grown = Math.max(size, 64 * 1024);
      this.#scratchPtr = this.alloc(grown);
      this.#scratchSize = alignUp(grown, ALIGN);
    }
    return this.#scratchPtr;
  }

  /** Bytes currently allocated (for tests and diagnostics). */
  get allocatedBytes(): number {
    let total = 0;
    for (const size of this.#sizes.values()) total += size;
    return total;
  }

  #ensure(end: number): void {
    const memory = this.exports.memory;
    const have = memory.buffer.byteLength;
    if (end <= have) return;
    const pages = Math.ceil((end - have) / WASM_PAGE);
    try {
      memory.grow(pages);
    } catch (cause) {
      throw new MigrationError("ENOMEM", `WebAssembly memory cannot grow to ${end} bytes`, { cause });
    }
  }
}

function alignUp(value: number, align: number): number {
  return Math.ceil(value / align) * align;
}

let current: Core | undefined;
let generations = 0;

/** The live core instance, created on first use (synchronously: no top-level await anywhere). */
export function core(): Core {
  current ??= new Core(generations++);
  return current;
}

/**
 * Runs `fn` against the core. A trap means the instance may be inconsistent, so it is dropped
 * (with every block in it) and the caller gets a typed error instead of a RuntimeError.
 */
export function guarded<T>(fn: (c: Core) => T): T {
  const c = core();
  try {
    return fn(c);
  } catch (error) {
    if (error instanceof WebAssembly.RuntimeError) {
      if (current === c) current = undefined;
      throw new MigrationError("EFAULT", `Wasm core trapped (${error.message}); the instance was replaced`, {
        cause: error,
      });
    }
    throw error;
  }
}
