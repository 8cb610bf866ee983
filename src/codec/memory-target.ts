// A decode target that stages regions in core memory: the kernel applies records straight
// into staging blocks, and the caller's state is only touched after the stream verified.
//
// No full copy of the starting content is ever made up front:
// - a full stream must deliver every page; a region's staging is made only when a record first
//   writes into it (a header's claim costs nothing until pages arrive; ZERO records before
//   that cost nothing), from the staging pool or fresh memory;
// - an incremental stream over a base in core memory (a device's regions) copies on write, a
//   chunk (64 KiB, or a page if larger) the first time a record writes into it; committing
//   copies back only those chunks. A base outside core memory is copied once (it must be read
//   into core memory anyway).
import { CoreBuffer } from "../core/buffer.js";
import { core } from "../core/instance.js";
import { MigrationError } from "../core/errors.js";
import type { StreamHeader } from "../format/header.js";
import type { DecodeTarget, StagingRegion, TargetPlan } from "./decoder.js";
import { stagingPool } from "./staging-pool.js";

/** log2 of the smallest copy-on-write chunk. */
const MIN_CHUNK_SHIFT = 16;

/** A region's starting content: a block of core memory (copied on write) or any bytes (copied). */
export type InitialContent = CoreBuffer | Uint8Array;

/** One region's decoded content, ready to take a device region's place. */
export class StagedRegion {
  readonly #buffer: CoreBuffer;
  readonly #cow: { base: number; chunks: CoreBuffer; shift: number } | undefined;
  /** The block came from the pool (it goes back there even when the decode fails). */
  readonly #pooled: boolean;
  #live = true;

  constructor(buffer: CoreBuffer, pooled: boolean, cow?: { base: number; chunks: CoreBuffer; shift: number }) {
    this.#buffer = buffer;
    this.#pooled = pooled;
    this.#cow = cow;
  }

  get length(): number {
    return this.#buffer.length;
  }

  /** True if the content is only complete together with its base (copy-on-write staging). */
  get copyOnWrite(): boolean {
    return this.#cow !== undefined;
  }

  /**
   * Makes this content the region's: `current` is the region's block (which a copy-on-write
   * staging must have as its base; undefined when the region's block was never made). A full
   * staging is swapped in and `current` kept for later staging; a copy-on-write one has its written chunks copied into `current`. Returns the
   * block that now holds the region.
   */
  install(current: CoreBuffer | undefined): CoreBuffer {
    this.#use();
    this.#live = false;
    const cow = this.#cow;
    if (!cow) {
      // The region's block (if it was ever made) stages a later migration.
      if (current) stagingPool.give(current);
      return this.#buffer;
    }
    if (current?.ptr !== cow.base || current.length !== this.#buffer.length) {
      this.#release();
      throw new MigrationError("EINVAL", "copy-on-write staging installed over a region that is not its base");
    }
    copyChunks(current.bytes, this.#buffer.bytes, cow.chunks.bytes, cow.shift);
    this.#release();
    return current;
  }

  /** The content as bytes, into `out` (the base supplies chunks never written). */
  copyTo(out: Uint8Array, base: Uint8Array | undefined): void {
    this.#use();
    const cow = this.#cow;
    if (!cow) {
      out.set(this.#buffer.bytes);
      return;
    }
    out.set(base!);
    copyChunks(out, this.#buffer.bytes, cow.chunks.bytes, cow.shift);
  }

  /**
   * Gives the staging memory back: to the pool after a decode that succeeded (`keep`) or when
   * it came from there, else to the allocator, so that failed streams (a hostile header's
   * claim, say) never pin memory.
   */
  free(keep = false): void {
    if (!this.#live) return;
    this.#live = false;
    this.#release(keep);
  }

  #release(keep = true): void {
    if (keep || this.#pooled) stagingPool.give(this.#buffer);
    else this.#buffer.free();
    this.#cow?.chunks.free();
  }

  #use(): void {
    if (!this.#live) throw new MigrationError("EINVAL", "staged region already installed or freed");
  }
}

/** Copies the chunks marked in `chunks` from `from` into `to` (runs of chunks in one copy each). */
function copyChunks(to: Uint8Array, from: Uint8Array, chunks: Uint8Array, shift: number): void {
  const size = 2 ** shift;
  const count = Math.ceil(from.length / size);
  const marked = (c: number): boolean => (chunks[c >>> 3]! & (1 << (c & 7))) !== 0;
  for (let c = 0; c < count; ) {
    if (chunks[c >>> 3] === 0 && (c & 7) === 0) {
      c += 8;
      continue;
    }
    if (!marked(c)) {
      c++;
      continue;
    }
    let end = c + 1;
    while (end < count && marked(end)) end++;
    const start = c * size;
    to.set(from.subarray(start, Math.min(end * size, from.length)), start);
    c = end;
  }
}

export class MemoryTarget implements DecodeTarget {
  readonly #initial: ((region: number) => InitialContent | undefined) | undefined;
  /** Region i's staging once made (a full stream's is made when a record first writes there). */
  #staging: (StagedRegion | undefined)[] = [];
  #sizes: number[] = [];
  #committed = false;

  /**
   * `initial(i)` gives region i's starting content (the base or the device's current state),
   * asked for only when the stream is incremental; it must not change until the decode ends.
   */
  constructor(initial?: (region: number) => InitialContent | undefined) {
    this.#initial = initial;
  }

  open(header: StreamHeader): TargetPlan {
    const incremental = header.baseDigest !== undefined;
    this.#sizes = header.regions.map((r) => r.size);
    if (!incremental) {
      // A full stream: nothing is staged before a record writes into a region, so a header's
      // claim costs nothing until pages arrive, and ZERO records over untouched regions cost
      // nothing at all.
      this.#staging = header.regions.map(() => undefined);
      return {
        staging: header.regions.map(() => ({ ptr: 0, zeroed: true })),
        stage: (i) => {
          const block = stagingPool.take(this.#sizes[i]!);
          this.#staging[i] = new StagedRegion(block.buffer, block.pooled);
          return { ptr: block.buffer.ptr, zeroed: block.zeroed };
        },
      };
    }
    const chunkShift = Math.max(MIN_CHUNK_SHIFT, Math.log2(header.pageSize));
    const blocks: { buffer: CoreBuffer; zeroed: boolean; pooled: boolean; chunks?: CoreBuffer }[] = [];
    try {
      header.regions.forEach((region, i) => {
        const block: (typeof blocks)[number] = stagingPool.take(region.size);
        blocks.push(block);
        const start = incremental ? this.#initial?.(i) : undefined;
        if (start !== undefined && isCoreBlock(start)) block.chunks = new CoreBuffer(Math.ceil(Math.ceil(region.size / 2 ** chunkShift) / 8), true);
      });
    } catch (error) {
      for (const b of blocks) {
        if (b.pooled) stagingPool.give(b.buffer);
        else b.buffer.free();
        b.chunks?.free();
      }
      throw error;
    }
    // Everything is allocated: the starting content is looked up again (a view of core memory
    // taken before an allocation may be detached), and views taken from here on stay valid.
    const staging = blocks.map((b, i): StagingRegion => {
      const start = incremental ? this.#initial?.(i) : undefined;
      if (start === undefined) return { ptr: b.buffer.ptr, zeroed: b.zeroed };
      if (b.chunks) return { ptr: b.buffer.ptr, zeroed: false, cow: { base: baseOffset(start), chunks: b.chunks.ptr } };
      b.buffer.bytes.set(viewOf(start));
      return { ptr: b.buffer.ptr, zeroed: false };
    });
    this.#staging = blocks.map((b, i) =>
      b.chunks
        ? new StagedRegion(b.buffer, b.pooled, { base: staging[i]!.cow!.base, chunks: b.chunks, shift: chunkShift })
        : new StagedRegion(b.buffer, b.pooled),
    );
    return { staging, chunkShift };
  }

  commit(): void {
    this.#committed = true;
  }

  abort(): void {
    for (const region of this.#staging) region?.free();
    this.#staging = [];
  }

  /**
   * The committed regions, handed over to the caller (who installs or frees them). A region no
   * record wrote into (all ZERO records, absorbed) gets its zeros now.
   */
  take(): StagedRegion[] {
    if (!this.#committed) throw new MigrationError("EINVAL", "the stream has not been decoded completely");
    const staging = this.#staging.map((region, i) => region ?? new StagedRegion(new CoreBuffer(this.#sizes[i]!, true), false));
    this.#staging = [];
    return staging;
  }

  /**
   * The committed state as one fresh array (regions in order); `base(i)` gives region i's
   * starting content again for copy-on-write staging. Frees the staging.
   */
  result(base?: (region: number) => Uint8Array | undefined): Uint8Array {
    const regions = this.take();
    try {
      const total = regions.reduce((n, r) => n + r.length, 0);
      const state = new Uint8Array(total);
      let at = 0;
      regions.forEach((r, i) => {
        r.copyTo(state.subarray(at, at + r.length), r.copyOnWrite ? base?.(i) : undefined);
        at += r.length;
      });
      return state;
    } finally {
      for (const r of regions) r.free(true);
    }
  }
}

function isCoreBlock(start: InitialContent): boolean {
  return start instanceof CoreBuffer || core().owns(start);
}

function viewOf(start: InitialContent): Uint8Array {
  return start instanceof CoreBuffer ? start.bytes : start;
}

function baseOffset(start: InitialContent): number {
  return start instanceof CoreBuffer ? start.ptr : start.byteOffset;
}
