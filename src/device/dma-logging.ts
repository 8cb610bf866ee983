// Device DMA dirty logging (VFIO_DEVICE_FEATURE_DMA_LOGGING_START / _STOP / _REPORT): the
// device records which guest pages (by IOVA) it wrote by DMA, so a VMM can find the guest
// memory a device dirtied during pre-copy. Rules as the kernel applies them (vfio_main.c and
// the mlx5 / pds trackers): IOVAs are 64-bit (a number or a bigint up to 2^64 - 1, a range whose
// end passes 2^64 - 1 is EOVERFLOW); one logging session at a time; at most LOG_MAX_RANGES ranges, more is
// E2BIG; ranges must not overlap (EINVAL) and are aligned to the requested page size; the page
// size is a hint and the size actually used is reported back; a report reads and clears, and only
// ever sets bits in the caller's bitmap. The bitmaps live in core memory and are set and counted
// by the core's bitmap kernels, so a DMA write costs the same whatever its length.
import { CoreBuffer } from "../core/buffer.js";
import { MigrationError } from "../core/errors.js";
import { core } from "../core/instance.js";

/** LOG_MAX_RANGES in vfio_main.c: more ranges in one start request is E2BIG. */
export const DMA_LOG_MAX_RANGES = 256;

/** The largest IOVA: IOVAs are u64 in the uAPI. */
const IOVA_MAX = (1n << 64n) - 1n;

/** An IOVA or a length: a non-negative safe integer, or a bigint up to 2^64 - 1. */
export type Iova = number | bigint;

/** One IOVA range to track: [iova, iova + length). */
export interface DmaRange {
  iova: Iova;
  length: Iova;
}

export interface DmaLoggingStart {
  ranges: readonly DmaRange[];
  /** Page size hint (a power of two); the device may track at another size. */
  pageSize: number;
}

export interface DmaLoggingReport {
  iova: Iova;
  length: Iova;
  /**
   * Granularity of the returned bitmap: a power of two of at least 4 KiB (the kernel's rule),
   * up to 2^63; it may differ from the tracking size.
   */
  pageSize: number | bigint;
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
  readonly start: bigint;
  readonly end: bigint;
  /** start and end as numbers (exact when the session is `#safe`). */
  readonly startN: number;
  readonly endN: number;
  readonly pages: number;
  readonly bitmap: CoreBuffer;
}

/** Smallest report page size the kernel accepts (SZ_4K in vfio_main.c). */
const MIN_REPORT_PAGE = 4096n;

function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && (n & (n - 1)) === 0 && n <= 2 ** 30;
}

function isPowerOfTwoBig(n: bigint): boolean {
  return n > 0n && (n & (n - 1n)) === 0n;
}

function einval(message: string): MigrationError {
  return new MigrationError("EINVAL", message);
}

/** `value` as a u64, or undefined when it is not one (a negative, fractional or unsafe number, a bigint past 2^64 - 1). */
export function toU64(value: unknown): bigint | undefined {
  if (typeof value === "bigint") return value >= 0n && value <= IOVA_MAX ? value : undefined;
  if (typeof value === "number" && Number.isSafeInteger(value) && value >= 0) return BigInt(value);
  return undefined;
}

/** [iova, iova + length) as bigints; EINVAL for a value that is no u64, EOVERFLOW when the end passes 2^64 - 1. */
function u64Range(iova: unknown, length: unknown, what: string): { start: bigint; end: bigint } {
  const start = toU64(iova);
  const size = toU64(length);
  if (start === undefined || size === undefined) throw einval(`${what}: iova and length must be u64 (safe integers or bigints)`);
  // check_add_overflow(iova, length) in vfio_main.c: the end must itself be a u64.
  if (start + size > IOVA_MAX) throw new MigrationError("EOVERFLOW", `${what}: iova ${start} + length ${size} overflows 64 bits`);
  return { start, end: start + size };
}

/**
 * The checks vfio_main.c makes on a report before any driver sees it, in its order: the page
 * size (a power of two of at least 4 KiB, else EINVAL), then the end of the range (past
 * 2^64 - 1 is EOVERFLOW). Returns the range and the bitmap bytes the report needs (u64 words).
 */
export function reportLayout(request: Pick<DmaLoggingReport, "iova" | "length" | "pageSize">): {
  iova: bigint;
  end: bigint;
  pageSize: bigint;
  bitmapBytes: bigint;
} {
  const pageSize = toU64(request.pageSize);
  if (pageSize === undefined || pageSize < MIN_REPORT_PAGE || !isPowerOfTwoBig(pageSize)) {
    throw einval(`report page size must be a power of two of at least 4096, got ${String(request.pageSize)}`);
  }
  const { start: iova, end } = u64Range(request.iova, request.length, "report");
  const pages = (end - iova + pageSize - 1n) / pageSize;
  return { iova, end, pageSize, bitmapBytes: ((pages + 63n) / 64n) * 8n };
}

/** The DMA dirty tracker of one device. */
export class DmaLogging {
  readonly minPageSize: number;
  readonly maxPageSize: number;
  readonly maxBitmapBytes: number;
  #ranges: TrackedRange[] | undefined;
  #pageSize = 0;
  /** Every tracked bound is a safe integer: number IOVAs are recorded without bigints. */
  #safe = false;

  constructor(options: DmaLoggingOptions = {}) {
    this.minPageSize = options.minPageSize ?? 4096;
    this.maxPageSize = options.maxPageSize ?? 2 ** 30;
    this.maxBitmapBytes = options.maxBitmapBytes ?? 64 << 20;
    if (!isPowerOfTwo(this.minPageSize) || !isPowerOfTwo(this.maxPageSize) || this.minPageSize > this.maxPageSize) {
      throw einval(`DMA logging page sizes must be powers of two with min <= max`);
    }
    if (!Number.isSafeInteger(this.maxBitmapBytes) || this.maxBitmapBytes < 0) throw einval("DMA logging maxBitmapBytes must be a non-negative integer");
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
   * or non-power-of-two page size, an empty, unaligned or overlapping range (EINVAL); a range
   * whose end passes 2^64 - 1 (EOVERFLOW); more than DMA_LOG_MAX_RANGES ranges (E2BIG); bitmaps
   * past the memory budget (ENOMEM).
   */
  start(request: DmaLoggingStart): { pageSize: number } {
    if (this.#ranges) throw einval("a DMA logging session is already on (one at a time; stop it first)");
    const { ranges, pageSize } = request;
    if (!Array.isArray(ranges) || ranges.length === 0) throw einval("DMA logging needs at least one range");
    if (ranges.length > DMA_LOG_MAX_RANGES) {
      throw new MigrationError("E2BIG", `${ranges.length} DMA logging ranges exceed the maximum of ${DMA_LOG_MAX_RANGES}`);
    }
    if (!isPowerOfTwo(pageSize)) throw einval(`DMA logging page size must be a power of two, got ${String(pageSize)}`);
    const hint = BigInt(pageSize);
    const sorted = ranges.map((r, i) => {
      const what = `DMA logging range ${i}`;
      const iova = toU64(r?.iova);
      const length = toU64(r?.length);
      if (iova === undefined || length === undefined) throw einval(`${what}: iova and length must be u64 (safe integers or bigints)`);
      if (length === 0n) throw einval(`${what} is empty`);
      // vfio_main.c's order: alignment (EINVAL), then the end (EOVERFLOW).
      if (iova % hint !== 0n || length % hint !== 0n) throw einval(`${what} is not aligned to the page size ${pageSize}`);
      const { start, end } = u64Range(iova, length, what);
      return { start, end, index: i };
    });
    sorted.sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
    for (let i = 1; i < sorted.length; i++) {
      if (sorted[i]!.start < sorted[i - 1]!.end) {
        throw einval(`DMA logging ranges ${sorted[i - 1]!.index} and ${sorted[i]!.index} overlap`);
      }
    }
    // The hint, rounded into the tracker's range; ranges aligned to the hint may then cover
    // partial pages at a larger size, which is fine: a page is dirty if any byte of it is.
    const used = Math.min(this.maxPageSize, Math.max(this.minPageSize, pageSize));
    const size = BigInt(used);
    let bitmapBytes = 0n;
    const planned = sorted.map(({ start, end }) => {
      const pages = (end + size - 1n) / size - start / size;
      bitmapBytes += (pages + 7n) / 8n;
      return { start, end, pages };
    });
    // Checked before anything is allocated: the ranges are the peer's numbers.
    if (bitmapBytes > BigInt(this.maxBitmapBytes)) {
      throw new MigrationError("ENOMEM", `DMA logging bitmaps would take ${bitmapBytes} bytes, over the budget of ${this.maxBitmapBytes}`);
    }
    const tracked: TrackedRange[] = [];
    try {
      for (const p of planned) {
        const pages = Number(p.pages);
        tracked.push({ start: p.start, end: p.end, startN: Number(p.start), endN: Number(p.end), pages, bitmap: new CoreBuffer(Math.ceil(pages / 8), true) });
      }
    } catch (error) {
      for (const t of tracked) t.bitmap.free();
      throw error;
    }
    this.#ranges = tracked;
    this.#pageSize = used;
    this.#safe = tracked.every((t) => t.end <= BigInt(Number.MAX_SAFE_INTEGER));
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
  record(iova: Iova, length: number): void {
    const ranges = this.#ranges;
    if (!ranges || length <= 0) return;
    if (typeof iova === "number" && this.#safe && Number.isSafeInteger(iova + length)) {
      // The common case, every bound a safe integer: number arithmetic, no bigint per write.
      const end = iova + length;
      const size = this.#pageSize;
      const setRange = core().exports.bitmap_set_range;
      for (const r of ranges) {
        if (r.endN <= iova || r.startN >= end) continue;
        const base = Math.floor(r.startN / size);
        const first = Math.floor(Math.max(iova, r.startN) / size) - base;
        const last = Math.floor((Math.min(end, r.endN) - 1) / size) - base;
        setRange(r.bitmap.ptr, first, last - first + 1);
      }
      return;
    }
    const from = typeof iova === "bigint" ? iova : BigInt(iova);
    const end = from + BigInt(length);
    const size = BigInt(this.#pageSize);
    const setRange = core().exports.bitmap_set_range;
    for (const r of ranges) {
      if (r.end <= from || r.start >= end) continue;
      const base = r.start / size;
      const first = Number((from > r.start ? from : r.start) / size - base);
      const last = Number(((end < r.end ? end : r.end) - 1n) / size - base);
      setRange(r.bitmap.ptr, first, last - first + 1);
    }
  }

  /**
   * DMA_LOGGING_REPORT: the pages of [iova, iova + length) written since the last report, at
   * `pageSize` granularity (wider or narrower than the tracking size: a report page is dirty if
   * any tracked page overlapping it is). The tracked pages it covers are cleared. Refused: a
   * page size under 4 KiB or not a power of two (EINVAL, as vfio_main.c); an end past 2^64 - 1
   * (EOVERFLOW); a range not inside one tracked range or not aligned to `pageSize` (EINVAL); no
   * session (EINVAL); a bitmap too small for the report (EINVAL).
   */
  report(request: DmaLoggingReport): Uint8Array {
    const ranges = this.#ranges;
    const { iova, end, pageSize, bitmapBytes: bytes } = reportLayout(request);
    if (!ranges) throw einval("no DMA logging session is on");
    if (end === iova) throw einval("report range is empty");
    if (iova % pageSize !== 0n || (end - iova) % pageSize !== 0n) throw einval(`report range is not aligned to its page size ${pageSize}`);
    const range = ranges.find((r) => r.start <= iova && end <= r.end);
    if (!range) throw einval(`[${iova}, ${end}) is not inside one tracked DMA logging range`);
    const out = request.bitmap ?? (bytes <= BigInt(this.maxBitmapBytes) ? new Uint8Array(Number(bytes)) : undefined);
    if (out === undefined) throw new MigrationError("ENOMEM", `a report bitmap of ${bytes} bytes is over the budget of ${this.maxBitmapBytes}`);
    if (!(out instanceof Uint8Array) || BigInt(out.length) < bytes) throw einval(`report bitmap needs ${bytes} bytes`);
    const size = BigInt(this.#pageSize);
    const base = range.start / size;
    const first = Number(iova / size - base);
    const last = Number((end - 1n) / size - base);
    const bits = range.bitmap.bytes;
    const mark = (r0: number, r1: number): void => {
      for (let r = r0; r <= r1; r++) out[r >>> 3] = out[r >>> 3]! | (1 << (r & 7));
    };
    // Each dirty tracked page marks the report pages it overlaps. Offsets are taken relative to
    // `iova`, in plain numbers wherever the reported span allows (every real one): no bigint is
    // made per page. Spans past 2^53 bytes keep exact bigint arithmetic.
    const span = end - iova;
    const markPage: (page: number) => void =
      span <= BigInt(Number.MAX_SAFE_INTEGER - this.#pageSize)
        ? (() => {
            const tracked = this.#pageSize;
            const reportPage = Number(pageSize);
            const length = Number(span);
            // Where iova falls inside the first tracked page (a report page may be narrower).
            const lead = Number(iova - (base + BigInt(first)) * size);
            return (page: number) => {
              const start = (page - first) * tracked - lead;
              mark(Math.floor(Math.max(0, start) / reportPage), Math.floor((Math.min(length, start + tracked) - 1) / reportPage));
            };
          })()
        : (page: number) => {
            const pageStart = (base + BigInt(page)) * size;
            const from = iova > pageStart ? iova : pageStart;
            const to = end < pageStart + size ? end : pageStart + size;
            mark(Number((from - iova) / pageSize), Number((to - 1n - iova) / pageSize));
          };
    // Walk the set tracked pages byte by byte (zero bytes are skipped): once per report, over
    // the reported range only.
    for (let byte = first >>> 3; byte <= last >>> 3; byte++) {
      const value = bits[byte]!;
      if (value === 0) continue;
      for (let bit = 0; bit < 8; bit++) {
        const page = byte * 8 + bit;
        if (page >= first && page <= last && (value & (1 << bit)) !== 0) markPage(page);
      }
    }
    core().exports.bitmap_clear_range(range.bitmap.ptr, first, last - first + 1);
    return out;
  }
}
