// Device DMA dirty logging (VFIO_DEVICE_FEATURE_DMA_LOGGING_START / _STOP / _REPORT): the
// device records which guest pages (by IOVA) it wrote by DMA, so a VMM can find the guest
// memory a device dirtied during pre-copy. Rules as the kernel applies them (vfio_main.c and
// the mlx5 / pds trackers): one logging session at a time; at most LOG_MAX_RANGES ranges, more is
// E2BIG; ranges must not overlap (EINVAL) and are aligned to the requested page size; the page
// size is a hint and the size actually used is reported back; a report reads and clears, and only
// ever sets bits in the caller's bitmap. The bitmaps live in core memory and are set and counted
// by the core's bitmap kernels, so a DMA write costs the same whatever its length.
import { CoreBuffer } from "../core/buffer.js";
import { MigrationError } from "../core/errors.js";
import { core } from "../core/instance.js";

/** LOG_MAX_RANGES in vfio_main.c: more ranges in one start request is E2BIG. */
export const DMA_LOG_MAX_RANGES = 256;

/** One IOVA range to track: [iova, iova + length). Byte numbers (safe integers). */
export interface DmaRange {
  iova: number;
  length: number;
}

export interface DmaLoggingStart {
  ranges: readonly DmaRange[];
  /** Page size hint (a power of two); the device may track at another size. */
  pageSize: number;
}

export interface DmaLoggingReport {
  iova: number;
  length: number;
  /** Granularity of the returned bitmap (a power of two); may differ from the tracking size. */
  pageSize: number;
  /**
   * The caller's bitmap (u64 words, little-endian, bit n = page n of the report): bits are only
   * ever set in it, never cleared. Default: a fresh zeroed one.
   */
  bitmap?: Uint8Array;
}

export interface DmaLoggingOptions {
  /** Smallest and largest page size the tracker can use. Default 4 KiB and 1 GiB. */
  minPageSize?: number;
  maxPageSize?: number;
  /** Bitmap memory a session may take (one bit per tracked page). Default 64 MiB. */
  maxBitmapBytes?: number;
}

interface TrackedRange {
  readonly start: number;
  readonly end: number;
  readonly pages: number;
  readonly bitmap: CoreBuffer;
}

function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && (n & (n - 1)) === 0 && n <= 2 ** 30;
}

function einval(message: string): MigrationError {
  return new MigrationError("EINVAL", message);
}

/** The DMA dirty tracker of one device. */
export class DmaLogging {
  readonly minPageSize: number;
  readonly maxPageSize: number;
  readonly maxBitmapBytes: number;
  #ranges: TrackedRange[] | undefined;
  #pageSize = 0;

  constructor(options: DmaLoggingOptions = {}) {
    this.minPageSize = options.minPageSize ?? 4096;
    this.maxPageSize = options.maxPageSize ?? 2 ** 30;
    this.maxBitmapBytes = options.maxBitmapBytes ?? 64 << 20;
    if (!isPowerOfTwo(this.minPageSize) || !isPowerOfTwo(this.maxPageSize) || this.minPageSize > this.maxPageSize) {
      throw einval(`DMA logging page sizes must be powers of two with min <= max`);
    }
  }

  /** True while a logging session is on. */
  get active(): boolean {
    return this.#ranges !== undefined;
  }

  /** The page size the session tracks at (0 when none is on). */
  get pageSize(): number {
    return this.#pageSize;
  }

  /**
   * DMA_LOGGING_START. Returns the page size actually used: the hint rounded into what the
   * tracker supports. Refused: a session already on (EINVAL, one at a time); no ranges, a zero
   * or non-power-of-two page size, an empty, unaligned, overflowing or overlapping range
   * (EINVAL); more than DMA_LOG_MAX_RANGES ranges (E2BIG); bitmaps past the memory budget (ENOMEM).
   */
  start(request: DmaLoggingStart): { pageSize: number } {
    if (this.#ranges) throw einval("a DMA logging session is already on (one at a time; stop it first)");
    const { ranges, pageSize } = request;
    if (!isPowerOfTwo(pageSize)) throw einval(`DMA logging page size must be a power of two, got ${String(pageSize)}`);
    if (!Array.isArray(ranges) || ranges.length === 0) throw einval("DMA logging needs at least one range");
    if (ranges.length > DMA_LOG_MAX_RANGES) {
      throw new MigrationError("E2BIG", `${ranges.length} DMA logging ranges exceed the maximum of ${DMA_LOG_MAX_RANGES}`);
    }
    const sorted = ranges.map((r, i) => {
      const { iova, length } = r;
      if (!Number.isSafeInteger(iova) || !Number.isSafeInteger(length) || iova < 0 || length <= 0) {
        throw einval(`DMA logging range ${i} is not a non-empty range of safe integers`);
      }
      if (iova % pageSize !== 0 || length % pageSize !== 0) throw einval(`DMA logging range ${i} is not aligned to the page size ${pageSize}`);
      if (!Number.isSafeInteger(iova + length)) throw einval(`DMA logging range ${i} overflows`);
      return { start: iova, end: iova + length, index: i };
    });
    sorted.sort((a, b) => a.start - b.start);
    for (let i = 1; i < sorted.length; i++) {
      if (sorted[i]!.start < sorted[i - 1]!.end) {
        throw einval(`DMA logging ranges ${sorted[i - 1]!.index} and ${sorted[i]!.index} overlap`);
      }
    }
    // The hint, rounded into the tracker's range; ranges aligned to the hint may then cover
    // partial pages at a larger size, which is fine: a page is dirty if any byte of it is.
    const used = Math.min(this.maxPageSize, Math.max(this.minPageSize, pageSize));
    let bitmapBytes = 0;
    const planned = sorted.map(({ start, end }) => {
      const first = Math.floor(start / used);
      const pages = Math.ceil(end / used) - first;
      bitmapBytes += Math.ceil(pages / 8);
      return { start, end, pages };
    });
    if (bitmapBytes > this.maxBitmapBytes) {
      throw new MigrationError("ENOMEM", `DMA logging bitmaps would take ${bitmapBytes} bytes, over the budget of ${this.maxBitmapBytes}`);
    }
    const tracked: TrackedRange[] = [];
    try {
      for (const p of planned) tracked.push({ ...p, bitmap: new CoreBuffer(Math.ceil(p.pages / 8), true) });
    } catch (error) {
      for (const t of tracked) t.bitmap.free();
      throw error;
    }
    this.#ranges = tracked;
    this.#pageSize = used;
    return { pageSize: used };
  }

  /** DMA_LOGGING_STOP: ends the session and frees its bitmaps. A no-op when none is on. */
  stop(): void {
    for (const r of this.#ranges ?? []) r.bitmap.free();
    this.#ranges = undefined;
    this.#pageSize = 0;
  }

  /**
   * Records a device write of `length` bytes at `iova`. Only the parts inside tracked ranges
   * are recorded (the device may write untracked memory; the VMM asked about these ranges).
   */
  record(iova: number, length: number): void {
    const ranges = this.#ranges;
    if (!ranges || length <= 0) return;
    const end = iova + length;
    const size = this.#pageSize;
    const setRange = core().exports.bitmap_set_range;
    for (const r of ranges) {
      if (r.end <= iova || r.start >= end) continue;
      const base = Math.floor(r.start / size);
      const first = Math.floor(Math.max(iova, r.start) / size) - base;
      const last = Math.floor((Math.min(end, r.end) - 1) / size) - base;
      setRange(r.bitmap.ptr, first, last - first + 1);
    }
  }

  /**
   * DMA_LOGGING_REPORT: the pages of [iova, iova + length) written since the last report, at
   * `pageSize` granularity (wider or narrower than the tracking size: a report page is dirty if
   * any tracked page overlapping it is). The tracked pages it covers are cleared. The range must
   * lie inside one tracked range and be aligned to `pageSize` (EINVAL); no session is EINVAL.
   */
  report(request: DmaLoggingReport): Uint8Array {
    const ranges = this.#ranges;
    if (!ranges) throw einval("no DMA logging session is on");
    const { iova, length, pageSize } = request;
    if (!isPowerOfTwo(pageSize)) throw einval(`report page size must be a power of two, got ${String(pageSize)}`);
    if (!Number.isSafeInteger(iova) || !Number.isSafeInteger(length) || iova < 0 || length <= 0 || !Number.isSafeInteger(iova + length)) {
      throw einval("report range must be a non-empty range of safe integers");
    }
    if (iova % pageSize !== 0 || length % pageSize !== 0) throw einval(`report range is not aligned to its page size ${pageSize}`);
    const end = iova + length;
    const range = ranges.find((r) => r.start <= iova && end <= r.end);
    if (!range) throw einval(`[${iova}, ${end}) is not inside one tracked DMA logging range`);
    const reportPages = length / pageSize;
    const words = Math.ceil(reportPages / 64);
    const out = request.bitmap ?? new Uint8Array(words * 8);
    if (!(out instanceof Uint8Array) || out.length < words * 8) throw einval(`report bitmap needs ${words * 8} bytes`);
    const size = this.#pageSize;
    const base = Math.floor(range.start / size);
    const first = Math.floor(iova / size) - base;
    const last = Math.floor((end - 1) / size) - base;
    const bits = range.bitmap.bytes;
    // Walk the set tracked pages byte by byte (zero bytes are skipped), map each to the report
    // pages it overlaps. Control path: it runs once per report, over the reported range only.
    for (let byte = first >>> 3; byte <= last >>> 3; byte++) {
      const value = bits[byte]!;
      if (value === 0) continue;
      for (let bit = 0; bit < 8; bit++) {
        const page = byte * 8 + bit;
        if (page < first || page > last || (value & (1 << bit)) === 0) continue;
        const from = Math.max(iova, (base + page) * size);
        const to = Math.min(end, (base + page + 1) * size);
        const r0 = Math.floor((from - iova) / pageSize);
        const r1 = Math.floor((to - 1 - iova) / pageSize);
        for (let r = r0; r <= r1; r++) out[r >>> 3] = out[r >>> 3]! | (1 << (r & 7));
      }
    }
    core().exports.bitmap_clear_range(range.bitmap.ptr, first, last - first + 1);
    return out;
  }
}
