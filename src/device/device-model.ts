// The device model: state regions living in Wasm memory, dirty tracking in one of three modes,
// and the page bitmaps the saving side reads. It knows nothing of migration states; the
// migration layer asks it what changed and tells it what was sent.
import { allocating, CoreBuffer } from "../core/buffer.js";
import { MigrationError } from "../core/errors.js";
import { core, guarded, type Core } from "../core/instance.js";
import { validatePageSize } from "../core/scan.js";
import type { RegionSpec } from "../format/header.js";
import { DmaLogging, type DmaLoggingOptions } from "./dma-logging.js";
import { validateRegions } from "../format/header.js";

/**
 * - `explicit`: every write() / markDirty() sets bits; cost proportional to what changed.
 * - `shadow`: a copy of what the receiver holds, compared page by page (SIMD) when asked; it is
 *   also the reference XBZRLE deltas are coded against.
 * - `hash`: an XXH3-64 per page (8 bytes instead of a whole copy), recomputed when asked.
 */
/** A region's new content as a resume staged it (see codec/memory-target.ts). */
export interface StagedContent {
  readonly length: number;
  /** Makes this the content of the region whose block is `current`; returns the block that holds it now. */
  install(current: CoreBuffer | undefined): CoreBuffer;
  free(): void;
}

export type DirtyTracking = "explicit" | "shadow" | "hash";

export interface DeviceModelOptions {
  regions: readonly RegionSpec[];
  /** Page size for tracking and streams (power of two, 64 to 1 MiB). Default 4096. */
  pageSize?: number;
  /** Default "explicit". */
  tracking?: DirtyTracking;
  /** Page sizes and memory budget of the DMA dirty tracker. */
  dmaLogging?: DmaLoggingOptions;
}

/** One region with its tracking state; pointers are into core memory. */
export class TrackedRegion {
  readonly name: string;
  readonly size: number;
  readonly pages: number;
  readonly bitmapBytes: number;
  #data: CoreBuffer | undefined;
  /** Pages changed since they were last sent (explicit: set by writes; hash: set by scans). */
  readonly pending: CoreBuffer;
  readonly shadow: CoreBuffer | undefined;
  readonly hashes: CoreBuffer | undefined;
  /** Throwaway bitmap for scans whose result is not kept. */
  readonly scratch: CoreBuffer;

  constructor(spec: RegionSpec, pageSize: number, tracking: DirtyTracking) {
    this.name = spec.name;
    this.size = spec.size;
    this.pages = Math.ceil(spec.size / pageSize);
    this.bitmapBytes = Math.ceil(this.pages / 8);
    const buffers = allocating((alloc) => ({
      pending: alloc(this.bitmapBytes, true),
      scratch: alloc(this.bitmapBytes),
      // Shadow and hashes start unspecified: the first pass sends every page and sets them.
      shadow: tracking === "shadow" ? alloc(spec.size) : undefined,
      hashes: tracking === "hash" ? alloc(this.pages * 8) : undefined,
    }));
    this.pending = buffers.pending;
    this.scratch = buffers.scratch;
    this.shadow = buffers.shadow;
    this.hashes = buffers.hashes;
  }

  /**
   * The region's bytes in core memory, made (zeros) on first use: a device created to receive a
   * migration costs nothing until a state is installed in it, however large the stream's
   * header says its regions are.
   */
  get data(): CoreBuffer {
    this.#data ??= new CoreBuffer(this.size, true);
    return this.#data;
  }

  set data(buffer: CoreBuffer) {
    this.#data = buffer;
  }

  /** The region's block if it was made, without making it. */
  get madeData(): CoreBuffer | undefined {
    return this.#data;
  }

  free(): void {
    for (const b of [this.#data, this.pending, this.scratch, this.shadow, this.hashes]) b?.free();
    this.#data = undefined;
  }
}

export class DeviceModel {
  readonly pageSize: number;
  readonly tracking: DirtyTracking;
  readonly regions: readonly TrackedRegion[];
  /** Guest pages this device wrote by DMA (VFIO DMA logging); see dma-logging.ts. */
  readonly dma: DmaLogging;
  readonly #core: Core;
  readonly #index = new Map<string, number>();

  constructor(options: DeviceModelOptions) {
    validateRegions(options.regions);
    this.pageSize = options.pageSize ?? 4096;
    validatePageSize(this.pageSize);
    this.tracking = options.tracking ?? "explicit";
    if (!["explicit", "shadow", "hash"].includes(this.tracking)) {
      throw new MigrationError("EINVAL", `unknown dirty tracking mode ${JSON.stringify(this.tracking)}`);
    }
    this.#core = core();
    this.dma = new DmaLogging(options.dmaLogging);
    const regions: TrackedRegion[] = [];
    try {
      options.regions.forEach((spec, i) => {
        this.#index.set(spec.name, i);
        regions.push(new TrackedRegion(spec, this.pageSize, this.tracking));
      });
    } catch (error) {
      for (const r of regions) r.free();
      throw error;
    }
    this.regions = regions;
  }

  /** The layout, as streams carry it. */
  get layout(): RegionSpec[] {
    return this.regions.map((r) => ({ name: r.name, size: r.size }));
  }

  /** Total state bytes. */
  get size(): number {
    return this.regions.reduce((n, r) => n + r.size, 0);
  }

  regionIndex(region: number | string): number {
    const index = typeof region === "number" ? region : this.#index.get(region);
    if (index === undefined || !Number.isInteger(index) || index < 0 || index >= this.regions.length) {
      throw new MigrationError("EINVAL", `no region ${JSON.stringify(region)}`);
    }
    return index;
  }

  /** The current bytes of a region: a view into core memory (take it again after allocating). */
  view(region: number | string): Uint8Array {
    return this.regions[this.regionIndex(region)]!.data.bytes;
  }

  /** Writes bytes into a region and, with explicit tracking, marks their pages dirty. */
  write(region: number | string, offset: number, bytes: Uint8Array): void {
    const r = this.regions[this.regionIndex(region)]!;
    this.#checkRange(r, offset, bytes.length);
    r.data.bytes.set(bytes, offset);
    if (this.tracking === "explicit") this.#mark(r, offset, bytes.length);
  }

  /** Marks a range dirty (explicit tracking; a no-op for modes that find changes themselves). */
  markDirty(region: number | string, offset: number, length: number): void {
    const r = this.regions[this.regionIndex(region)]!;
    this.#checkRange(r, offset, length);
    if (this.tracking === "explicit") this.#mark(r, offset, length);
  }

  /**
   * Folds what changed in pages [0, upto) of region `i` into its pending bitmap and returns how
   * many of those pages are pending. Explicit tracking already has it; the others scan (without
   * updating the shadow: pages are only "sent" when the encoder sends them).
   */
  collect(i: number, upto: number): number {
    const r = this.regions[i]!;
    const c = this.#core;
    if (upto > 0 && this.tracking !== "explicit") {
      const length = Math.min(r.size, upto * this.pageSize);
      guarded(() => {
        if (this.tracking === "shadow") {
          // The shadow is the truth: what differs from it now is exactly what is pending.
          c.exports.scan_dirty(r.data.ptr, r.shadow!.ptr, length, this.pageSize, r.pending.ptr, 0);
        } else {
          // A scan moves the stored hashes forward, so what it found must be kept.
          c.exports.scan_hash(r.data.ptr, length, this.pageSize, r.hashes!.ptr, r.scratch.ptr);
          c.exports.bitmap_or(r.pending.ptr, r.scratch.ptr, Math.ceil(Math.ceil(length / this.pageSize) / 8));
        }
      });
    }
    // Only pages [0, upto) count: explicit tracking also marks pages the first pass has not sent
    // yet, which are not "changed relative to data already read" (PRE_COPY info's dirty_bytes).
    return c.exports.bitmap_count(r.pending.ptr, Math.min(Math.max(upto, 0), r.pages)) >>> 0;
  }

  /** Forgets pending changes of pages [first, first+count) of region `i` (they were just sent). */
  clearPending(i: number, first: number, count: number): void {
    this.#core.exports.bitmap_clear_range(this.regions[i]!.pending.ptr, first, count);
  }

  /**
   * Records the content of pages [first, first+count) as sent, for hash tracking. With
   * `keepChanged` (`first` a multiple of 8), pages whose content no longer matches their stored
   * hash are also marked pending: a rescan after a partial send must not forget pages of the
   * range that changed but were not sent.
   */
  rehash(i: number, first: number, count: number, keepChanged = false): void {
    const r = this.regions[i]!;
    if (!r.hashes) return;
    const offset = first * this.pageSize;
    const length = Math.min(r.size - offset, count * this.pageSize);
    if (length <= 0) return;
    guarded((c) => {
      const changed = c.exports.scan_hash(r.data.ptr + offset, length, this.pageSize, r.hashes!.ptr + first * 8, r.scratch.ptr);
      if (keepChanged && changed > 0) {
        if (first % 8 !== 0) throw new MigrationError("EINVAL", `rehash range must start on a bitmap byte, got page ${first}`);
        c.exports.bitmap_or(r.pending.ptr + first / 8, r.scratch.ptr, Math.ceil(Math.ceil(length / this.pageSize) / 8));
      }
    });
  }

  /** Starts tracking afresh: nothing is pending (a full pass is about to send everything). */
  resetTracking(): void {
    for (const r of this.regions) r.pending.bytes.fill(0);
  }

  /**
   * Replaces every region's content (a committed resume), keeping the tracking buffers. A
   * CoreBuffer takes the region's place (the old block is freed); staged content installs
   * itself (a swap, or copying back the chunks a copy-on-write staging wrote).
   */
  replaceContent(contents: readonly (StagedContent | CoreBuffer)[]): void {
    if (contents.length !== this.regions.length) throw new MigrationError("EINVAL", `${this.regions.length} regions, got ${contents.length}`);
    this.regions.forEach((r, i) => {
      const next = contents[i]!;
      if (next.length !== r.size) throw new MigrationError("EINVAL", `region ${r.name} has ${r.size} bytes, got ${next.length}`);
    });
    this.regions.forEach((r, i) => {
      const next = contents[i]!;
      if (next instanceof CoreBuffer) {
        r.madeData?.free();
        r.data = next;
      } else {
        r.data = next.install(r.madeData);
      }
    });
    this.resetTracking();
  }

  /** XXH3-64 of the whole state (regions in order), the identity incremental streams name. */
  digest(): bigint {
    return guarded((c) => {
      const state = c.alloc(c.exports.xxh3_state_size());
      try {
        c.exports.xxh3_reset(state, 0n);
        for (const r of this.regions) c.exports.xxh3_update(state, r.data.ptr, r.size);
        return BigInt.asUintN(64, c.exports.xxh3_digest(state));
      } finally {
        c.free(state);
      }
    });
  }

  /** A copy of the whole state (regions concatenated). */
  snapshot(): Uint8Array {
    const out = new Uint8Array(this.size);
    let at = 0;
    for (const r of this.regions) {
      out.set(r.data.bytes, at);
      at += r.size;
    }
    return out;
  }

  /** Releases the core memory of every region (and of a DMA logging session). */
  free(): void {
    this.dma.stop();
    for (const r of this.regions) r.free();
  }

  #checkRange(r: TrackedRegion, offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > r.size) {
      throw new MigrationError("EINVAL", `range [${offset}, ${offset + length}) is outside region ${JSON.stringify(r.name)} of ${r.size} bytes`);
    }
  }

  #mark(r: TrackedRegion, offset: number, length: number): void {
    if (length === 0) return;
    const first = Math.floor(offset / this.pageSize);
    const last = Math.floor((offset + length - 1) / this.pageSize);
    this.#core.exports.bitmap_set_range(r.pending.ptr, first, last - first + 1);
  }
}
