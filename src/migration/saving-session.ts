// The saving side of a migration data session (the readable data_fd of VFIO v2): the device's
// state as a migstream stream, produced lazily one window per read. A pass sends pages (all of
// them first, then those that changed since); in pre-copy each pass ends with a round marker,
// and once the device is stopped a last pass, the config blob and the end record follow.
import { MigrationError } from "../core/errors.js";
import { StreamEncoder } from "../codec/encoder.js";
import { CoreBuffer } from "../core/buffer.js";
import { core, guarded } from "../core/instance.js";
import type { DeviceModel } from "../device/device-model.js";
import { END_PAYLOAD, RECORD_OVERHEAD, ROUND_PAYLOAD } from "../format/constants.js";
import type { Compression } from "../format/constants.js";
import { measuredLz4Ratio, sampleLz4Ratio } from "./estimate.js";

/** Pages per encode call: 1 MiB at 4 KiB pages, and a whole number of bitmap bytes. */
const WINDOW_BYTES = 1 << 20;

/**
 * Encoder output of at least this size is queued in a reusable buffer (see release()); smaller
 * pieces (the header, round markers) are plain copies.
 */
const POOLED_MIN = 64 * 1024;
/** A reusable queue buffer holds this much (an encoder drain is 1 to 2 MiB), or one drain if larger. */
const POOLED_BYTES = 2 << 20;
/** Reusable queue buffers kept while none is in use. */
const MAX_SPARE = 4;

/** A reusable queue buffer: pieces of it read() handed out and not yet released, and whether it is still queued. */
interface PooledState {
  out: number;
  queued: boolean;
}

export interface SavingOptions {
  deviceId: string;
  checksum?: "xxh3" | "crc32c";
  maxRecordPayload?: number;
  /** Page compression ("lz4": runs of raw pages as LZ4 records when smaller). Default "none". */
  compress?: Compression;
  /** True in PRE_COPY states: pre-copy rounds until the device stops. */
  precopy: boolean;
  /** Offer PRECOPY_INFOv2 (`precopyInfoV2()`, with the REINIT flag). Default false. */
  precopyInfoV2?: boolean;
}

export interface PrecopyInfo {
  /** Initial data (the first pass over every page) not read yet. */
  initialBytes: number;
  /** Changed data not read yet: pages changed since sent, plus unread bytes of later passes. */
  dirtyBytes: number;
}

/** VFIO_PRECOPY_INFO_REINIT: the device re-initialised; initial_bytes may have risen. */
export const VFIO_PRECOPY_INFO_REINIT = 1;

/** PRECOPY_INFOv2: the v1 figures plus flags (VFIO_PRECOPY_INFO_REINIT). */
export interface PrecopyInfoV2 extends PrecopyInfo {
  flags: number;
}

/**
 * Estimated bytes of a whole stop-copy stream of `device` (no session open): header, every
 * non-zero page (times `ratio`, the stream bytes per page byte of a compressed stream), a record
 * per region, the config blob and the END record. One read of the state (a zero scan in the core).
 */
export function estimateStreamBytes(device: DeviceModel, deviceId: string, configBytes = 0, ratio = 1): number {
  const utf8 = new TextEncoder();
  let bytes = 56 + utf8.encode(deviceId).length;
  const scan = core().exports.scan_zero;
  for (const r of device.regions) {
    bytes += 2 + utf8.encode(r.name).length + 8;
    let zero = 0;
    guarded(() => r.inCore(device.pageSize, (ptr, _offset, length) => (zero += scan(ptr, length, device.pageSize, r.scratch.ptr) >>> 0)));
    bytes += Math.ceil((r.pages - zero) * device.pageSize * ratio) + RECORD_OVERHEAD;
  }
  return bytes + (configBytes > 0 ? RECORD_OVERHEAD + configBytes : 0) + RECORD_OVERHEAD + END_PAYLOAD;
}

/** The last record of a pass: a ROUND marker in pre-copy, the END record in stop-copy. */
const CLOSING_RECORD = RECORD_OVERHEAD + Math.max(ROUND_PAYLOAD, END_PAYLOAD);

interface Pass {
  /** Per region: bitmap of pages to send (taken when the pass began), or undefined: all. */
  selected: (CoreBuffer | undefined)[];
  region: number;
  page: number;
  initial: boolean;
}

export class SavingSession {
  readonly #device: DeviceModel;
  readonly #encoder: StreamEncoder;
  readonly #queue: Uint8Array[] = [];
  #queued = 0;
  /**
   * Queue buffers free for the next encoder output. Copying each drain into fresh memory cost
   * more than the encoding (first touch of new memory, and garbage), so buffers whose bytes
   * were all read, and given back by release() if read() handed them out, are reused.
   */
  readonly #spare: ArrayBuffer[] = [];
  readonly #pooled = new WeakMap<ArrayBufferLike, PooledState>();
  /** Chunks read() handed out from reusable buffers and not yet released. */
  readonly #lent = new WeakSet<Uint8Array>();
  #pass: Pass | undefined;
  #stopped: boolean;
  #config: Uint8Array | undefined;
  #ended = false;
  #closed = false;
  #initialDone = false;
  #initialQueued = 0;
  #initialReported = Infinity;
  #bytesRead = 0;
  /** Per region, the pages that were all zero when the first pass began (its stream estimate). */
  #zeroPages: (CoreBuffer | undefined)[] | undefined;
  #infoV2: boolean;
  /** A re-initialisation not yet reported by PRECOPY_INFOv2. */
  #reinitPending = false;
  #initialReportedV2 = Infinity;
  /** LZ4 streams: stream bytes per page byte, sampled from the content until measured. */
  readonly #compressed: boolean;
  #sampledRatio: number | undefined;
  #readableWaiters: (() => void)[] = [];
  #initialWaiters: (() => void)[] = [];
  #probeScheduled = false;
  readonly #rounds: { round: number; pages: number; bytes: number; dirtyBytes: number }[] = [];

  constructor(device: DeviceModel, options: SavingOptions) {
    this.#device = device;
    this.#stopped = !options.precopy;
    this.#infoV2 = options.precopyInfoV2 === true;
    this.#compressed = options.compress === "lz4";
    this.#encoder = new StreamEncoder(
      {
        regions: device.layout,
        pageSize: device.pageSize,
        deviceId: options.deviceId,
        ...(options.checksum ? { checksum: options.checksum } : {}),
        ...(options.maxRecordPayload ? { maxRecordPayload: options.maxRecordPayload } : {}),
        ...(options.compress ? { compress: options.compress } : {}),
      },
      (view) => {
        if (view.length === 0) return;
        this.#queue.push(this.#copyOut(view));
        this.#queued += view.length;
        if (!this.#initialDone) this.#initialQueued += view.length;
      },
    );
    device.resetTracking();
    this.#startInitialPass();
  }

  /** True once closed by a state change; reading then is an error. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Stream bytes already produced and waiting to be read (reading them produces nothing new). */
  get buffered(): number {
    return this.#queued;
  }

  /** Stream bytes handed out so far. */
  get bytesRead(): number {
    return this.#bytesRead;
  }

  /** Pre-copy rounds completed so far. */
  get rounds(): readonly { round: number; pages: number; bytes: number; dirtyBytes: number }[] {
    return this.#rounds;
  }

  /**
   * Up to `max` bytes of stream. Returns null at the end of the stream (after the device
   * stopped and everything was sent); in pre-copy, throws ENOMSG when there is nothing to send
   * for now (distinct from the end).
   */
  read(max = 1 << 20): Uint8Array | null {
    if (this.#closed) throw new MigrationError("EINVAL", "read from a closed saving session");
    if (!Number.isInteger(max) || max < 1) throw new MigrationError("EINVAL", `invalid read size ${max}`);
    while (this.#queued === 0) {
      if (this.#ended) return null;
      if (!this.#produce()) throw new MigrationError("ENOMSG", "no migration data for now (pre-copy, nothing dirty)");
    }
    const head = this.#queue[0]!;
    let chunk: Uint8Array;
    if (head.length <= max) {
      this.#queue.shift();
      chunk = head;
    } else {
      chunk = head.subarray(0, max);
      this.#queue[0] = head.subarray(max);
    }
    const pooled = this.#pooled.get(head.buffer);
    if (pooled) {
      pooled.out++;
      if (chunk === head) pooled.queued = false;
      this.#lent.add(chunk);
    }
    this.#queued -= chunk.length;
    this.#consumed(chunk.length);
    return chunk;
  }

  /**
   * The caller no longer needs `chunk`, which read() returned (it was sent): its memory may
   * carry later stream bytes. Optional, and once per chunk; anything else is ignored. A chunk
   * never released is simply left to the garbage collector.
   */
  release(chunk: Uint8Array): void {
    if (!this.#lent.delete(chunk)) return;
    const pooled = this.#pooled.get(chunk.buffer);
    if (!pooled) return;
    pooled.out--;
    if (pooled.out === 0 && !pooled.queued) this.#recycle(chunk.buffer);
  }

  /** A copy of encoder output for the queue: in a reusable buffer when it is large. */
  #copyOut(view: Uint8Array): Uint8Array {
    if (view.length < POOLED_MIN) return view.slice();
    const at = this.#spare.findIndex((b) => b.byteLength >= view.length);
    const buffer = at >= 0 ? this.#spare.splice(at, 1)[0]! : new ArrayBuffer(Math.max(view.length, POOLED_BYTES));
    this.#pooled.set(buffer, { out: 0, queued: true });
    const copy = new Uint8Array(buffer, 0, view.length);
    copy.set(view);
    return copy;
  }

  #recycle(buffer: ArrayBufferLike): void {
    this.#pooled.delete(buffer);
    if (this.#spare.length < MAX_SPARE && !this.#closed && buffer instanceof ArrayBuffer) this.#spare.push(buffer);
  }

  /**
   * read(2) into the caller's buffer: fills as much of `buffer` as the session has (at least one
   * byte) and returns how many bytes it wrote; null at the end of the stream; throws ENOMSG when
   * pre-copy has nothing for now, like read(). Nothing is allocated per call.
   */
  readInto(buffer: Uint8Array): number | null {
    if (this.#closed) throw new MigrationError("EINVAL", "read from a closed saving session");
    if (!(buffer instanceof Uint8Array) || buffer.length === 0) throw new MigrationError("EINVAL", "readInto needs a non-empty Uint8Array");
    let written = 0;
    while (written < buffer.length) {
      if (this.#queued === 0) {
        if (this.#ended) break;
        // Once something was written, "nothing for now" just ends this read.
        if (!this.#produce()) {
          if (written > 0) break;
          throw new MigrationError("ENOMSG", "no migration data for now (pre-copy, nothing dirty)");
        }
        continue;
      }
      const head = this.#queue[0]!;
      const take = Math.min(head.length, buffer.length - written);
      buffer.set(head.subarray(0, take), written);
      if (take === head.length) {
        this.#queue.shift();
        const pooled = this.#pooled.get(head.buffer);
        if (pooled) {
          pooled.queued = false;
          if (pooled.out === 0) this.#recycle(head.buffer);
        }
      } else this.#queue[0] = head.subarray(take);
      this.#queued -= take;
      written += take;
    }
    if (written === 0) return null;
    this.#consumed(written);
    return written;
  }

  /**
   * Settles when read() would not throw ENOMSG: data is available, the stream has ended or the
   * session is closed (the uAPI's poll() after ENOMSG). Changes made through the device (write,
   * markDirty, dmaWrite) wake it; a change made behind the device's back needs `changed()`.
   * `signal` gives up the wait: the promise rejects with ECANCELED and the waiter is removed.
   */
  whenReadable(signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) return Promise.reject(new MigrationError("ECANCELED", "whenReadable aborted", { cause: signal.reason }));
    if (this.#readable()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const wake = (): void => {
        signal?.removeEventListener("abort", onAbort);
        resolve();
      };
      // An abandoned wait leaves no waiter behind (a poll loop with a deadline runs many).
      const onAbort = (): void => {
        const at = this.#readableWaiters.indexOf(wake);
        if (at >= 0) this.#readableWaiters.splice(at, 1);
        reject(new MigrationError("ECANCELED", "whenReadable aborted", { cause: signal?.reason }));
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#readableWaiters.push(wake);
    });
  }

  /** The device's state may have changed: wakes whenReadable() waiters that now have data. */
  changed(): void {
    if (this.#readableWaiters.length === 0 || this.#probeScheduled) return;
    // Coalesced: a burst of writes costs one look (a scan in shadow and hash tracking).
    this.#probeScheduled = true;
    queueMicrotask(() => {
      this.#probeScheduled = false;
      if (this.#readableWaiters.length > 0 && this.#readable()) this.#wakeReadable();
    });
  }

  /**
   * True once every byte of the initial data (the first pass) was read: initial_bytes reached 0
   * (QEMU's switchover-ack point, VFIO_MIG_FLAG_DEV_INIT_DATA_SENT). A re-initialisation makes
   * it false again until the new initial data was read.
   */
  get initialDataSent(): boolean {
    return this.#initialDone && this.#initialQueued === 0;
  }

  /** Settles when `initialDataSent` is (or becomes) true, or the session closes. */
  whenInitialDataSent(): Promise<void> {
    if (this.initialDataSent || this.#closed) return Promise.resolve();
    return new Promise((resolve) => this.#initialWaiters.push(resolve));
  }

  /**
   * The device re-initialised while running (firmware reload, function-level re-setup): all of
   * its state is initial data again. The stream carries on with a new full pass. PRECOPY_INFOv2
   * reports the rise of initial_bytes with VFIO_PRECOPY_INFO_REINIT; v1 PRE_COPY info, whose
   * initial_bytes must never rise, counts the new pass as dirty bytes. Only in PRE_COPY states.
   */
  reinitialize(): void {
    if (this.#closed || this.#stopped) {
      throw new MigrationError("EINVAL", "a saving session re-initialises only in the PRE_COPY states");
    }
    // v1 info: initial data fully sent stays sent (its initial_bytes never rises again).
    if (this.initialDataSent) this.#initialReported = 0;
    for (const bitmap of this.#pass?.selected ?? []) bitmap?.free();
    this.#startInitialPass();
    // "Any previously dirty bytes are treated as initial bytes": what is queued and not read
    // yet must be read before the new initial data counts as sent, and dirty_bytes restarts at
    // zero (the new pass starts at page 0, so no page counts as dirty relative to it).
    this.#initialQueued = this.#queued;
    this.#initialDone = false;
    this.#reinitPending = true;
    this.#initialReportedV2 = Infinity;
    this.#wakeReadable();
  }

  /**
   * PRE_COPY info, as VFIO_MIG_GET_PRECOPY_INFO reports it: stream bytes, not page bytes, and
   * counting what the encoder holds. 0/0 exactly when read() would throw ENOMSG. EINVAL outside
   * the PRE_COPY states (after the device stopped, or once closed), as the kernel answers.
   */
  precopyInfo(): PrecopyInfo {
    const { initialBytes, dirtyBytes } = this.#info();
    // initial_bytes must only shrink as the first pass is read; a rise (estimate noise, or a
    // re-initialisation, which only PRECOPY_INFOv2 may report) is counted as dirty instead.
    // A non-zero figure never shows as 0: 0/0 means "nothing to read now".
    let initial = Math.min(initialBytes, this.#initialReported);
    if (initial === 0 && initialBytes > 0 && this.#initialReported > 0) initial = 1;
    this.#initialReported = initial;
    return { initialBytes: initial, dirtyBytes: dirtyBytes + initialBytes - initial };
  }

  /**
   * Turns PRECOPY_INFOv2 on for this session (VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2 SET while it
   * is open). A re-initialisation before this point is reported by the first v2 answer.
   */
  enableInfoV2(): void {
    this.#infoV2 = true;
  }

  /**
   * PRECOPY_INFOv2 (opt-in with `precopyInfoV2`): like precopyInfo(), but after a device
   * re-initialisation initial_bytes may rise, and the first answer after it carries
   * VFIO_PRECOPY_INFO_REINIT.
   */
  precopyInfoV2(): PrecopyInfoV2 {
    if (!this.#infoV2) throw new MigrationError("EINVAL", "PRECOPY_INFOv2 was not enabled for this device");
    const { initialBytes, dirtyBytes } = this.#info();
    let initial = Math.min(initialBytes, this.#initialReportedV2);
    if (initial === 0 && initialBytes > 0) initial = initialBytes;
    this.#initialReportedV2 = initial;
    const flags = this.#reinitPending ? VFIO_PRECOPY_INFO_REINIT : 0;
    this.#reinitPending = false;
    return { initialBytes: initial, dirtyBytes: dirtyBytes + initialBytes - initial, flags };
  }

  /**
   * Estimated stream bytes still to come if the device stopped now (VFIO_DEVICE_FEATURE_MIG_DATA_SIZE,
   * v1's pending_bytes): unread and held bytes, the rest of the current pass, the dirty pages,
   * and the closing records. 0 only at the end of the stream. Valid in any saving state.
   */
  pendingBytes(): number {
    if (this.#closed || (this.#ended && this.#queued === 0)) return 0;
    const device = this.#device;
    let bytes = this.#queued + this.#encoder.heldBytes;
    const pass = this.#pass;
    if (pass) bytes += this.#passEstimate(pass);
    if (!this.#ended) {
      device.regions.forEach((r, i) => {
        const upto = pass?.initial ? (i < pass.region ? r.pages : i === pass.region ? pass.page : 0) : r.pages;
        bytes += this.#pageBytes(device.collect(i, upto));
      });
      bytes += CLOSING_RECORD + (this.#config ? RECORD_OVERHEAD + this.#config.length : 0);
    }
    return bytes;
  }

  #info(): PrecopyInfo {
    if (this.#closed) throw new MigrationError("EINVAL", "PRE_COPY info from a closed saving session");
    if (this.#stopped) throw new MigrationError("EINVAL", "PRE_COPY info is only available in the PRE_COPY states, the device has stopped");
    const device = this.#device;
    const pass = this.#pass;
    // What the encoder holds (a pass's last record stays open until the next window or the
    // round marker) is readable data: leaving it out reported 0/0 with a record still to come.
    const held = this.#encoder.heldBytes;
    let initialBytes = this.#initialQueued;
    let dirtyBytes = this.#queued - this.#initialQueued;
    const rest = held + (pass ? this.#passEstimate(pass) : 0);
    if (!this.#initialDone) initialBytes += rest;
    else dirtyBytes += rest;
    device.regions.forEach((r, i) => {
      // During the first pass only pages already sent can be dirty.
      const upto = pass?.initial ? (i < pass.region ? r.pages : i === pass.region ? pass.page : 0) : r.pages;
      dirtyBytes += this.#pageBytes(device.collect(i, upto));
    });
    return { initialBytes, dirtyBytes };
  }

  /** The device stopped (STOP_COPY): finish with a last pass, the config blob and the end. */
  stop(config: Uint8Array | undefined): void {
    this.#stopped = true;
    this.#config = config;
    this.#wakeReadable();
  }

  /** Ends the session (the arc out of the saving states). Releases the encoder. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (!this.#ended) this.#encoder.abort();
    for (const bitmap of this.#pass?.selected ?? []) bitmap?.free();
    this.#freeZeroPages();
    this.#pass = undefined;
    this.#queue.length = 0;
    this.#queued = 0;
    this.#spare.length = 0;
    this.#wakeReadable();
    this.#wakeInitial();
  }

  /** A new first pass over every page. */
  #startInitialPass(): void {
    const device = this.#device;
    this.#freeZeroPages();
    this.#pass = { selected: device.regions.map(() => undefined), region: 0, page: 0, initial: true };
  }

  /**
   * Per region, the pages that are all zero, scanned on the first estimate a pass needs (one
   * read of the state in the core; a session nobody asks about, stop-copy from STOP, pays
   * nothing): PRE_COPY info's initial_bytes counts them as the small record they become.
   */
  #zeroPagesNow(): (CoreBuffer | undefined)[] {
    if (this.#zeroPages) return this.#zeroPages;
    const device = this.#device;
    const zero: CoreBuffer[] = [];
    try {
      for (const r of device.regions) zero.push(new CoreBuffer(r.bitmapBytes));
    } catch (error) {
      for (const b of zero) b.free();
      throw error;
    }
    guarded((c) =>
      device.regions.forEach((r, i) =>
        // Windows are whole bitmap bytes of pages: each writes its own bytes of the bitmap.
        r.inCore(device.pageSize, (ptr, offset, length) => c.exports.scan_zero(ptr, length, device.pageSize, zero[i]!.ptr + offset / device.pageSize / 8)),
      ),
    );
    this.#zeroPages = zero;
    return zero;
  }

  #freeZeroPages(): void {
    for (const bitmap of this.#zeroPages ?? []) bitmap?.free();
    this.#zeroPages = undefined;
  }

  /** Bookkeeping after `length` bytes were handed out. */
  #consumed(length: number): void {
    this.#initialQueued = Math.max(0, this.#initialQueued - length);
    this.#bytesRead += length;
    if (this.initialDataSent) this.#wakeInitial();
  }

  /** What read() decides on: false exactly when it would throw ENOMSG. */
  #readable(): boolean {
    if (this.#closed || this.#ended || this.#stopped || this.#queued > 0 || this.#pass) return true;
    const device = this.#device;
    let dirty = 0;
    device.regions.forEach((r, i) => (dirty += device.collect(i, r.pages)));
    return dirty > 0;
  }

  #wakeReadable(): void {
    const waiters = this.#readableWaiters;
    this.#readableWaiters = [];
    for (const wake of waiters) wake();
  }

  #wakeInitial(): void {
    const waiters = this.#initialWaiters;
    this.#initialWaiters = [];
    for (const wake of waiters) wake();
  }

  /** Encodes one more window; false when pre-copy has nothing to send now. */
  #produce(): boolean {
    const pass = this.#pass;
    if (pass) {
      this.#encodeWindow(pass);
      return true;
    }
    const device = this.#device;
    let dirty = 0;
    device.regions.forEach((r, i) => (dirty += device.collect(i, r.pages)));
    if (dirty > 0) {
      this.#pass = {
        selected: device.regions.map((r, i) => {
          const bitmap = new CoreBuffer(r.bitmapBytes);
          bitmap.bytes.set(r.pending.bytes);
          device.clearPending(i, 0, r.pages);
          return bitmap;
        }),
        region: 0,
        page: 0,
        initial: false,
      };
      return true;
    }
    if (!this.#stopped) return false;
    if (this.#config) this.#encoder.writeConfig(this.#config);
    this.#encoder.end();
    this.#ended = true;
    return true;
  }

  #encodeWindow(pass: Pass): void {
    const device = this.#device;
    const region = device.regions[pass.region]!;
    const pageSize = device.pageSize;
    const windowPages = Math.max(8, Math.floor(WINDOW_BYTES / pageSize / 8) * 8);
    const first = pass.page;
    const count = Math.min(windowPages, region.pages - first);
    if (count > 0) {
      const offset = first * pageSize;
      const end = Math.min(region.size, (first + count) * pageSize);
      // Over the embedder's memory the encoder stages the window into core memory itself.
      const data = region.bytes.subarray(offset, end);
      const selected = pass.selected[pass.region];
      const dirty = selected?.bytes.subarray(first / 8, Math.ceil((first + count) / 8));
      const shadow = region.shadow?.bytes.subarray(offset, end);
      const anySelected = dirty?.some((b) => b !== 0) ?? false;
      this.#encoder.writePages(pass.region, offset, data, {
        ...(dirty ? { dirty } : {}),
        ...(shadow
          ? // The first pass sends everything and makes the shadow what the receiver holds;
            // later passes send only pages that differ from it, delta-coded when smaller.
            { shadow, updateShadow: true, delta: !pass.initial, skipClean: !pass.initial }
          : {}),
      });
      if (pass.initial) {
        device.clearPending(pass.region, first, count);
        device.rehash(pass.region, first, count);
      } else if (anySelected) {
        // Hash tracking stored these pages' hashes when the pass selected them, but the workload
        // may have changed them before they were sent just now. The hashes must describe what
        // was sent: else a page changed back to its selected content afterwards would look clean
        // and the receiver would keep the intermediate version. Pages of the window that changed
        // without being sent stay pending.
        device.rehash(pass.region, first, count, true);
      }
      pass.page += count;
      // Every window's finished records become readable at once (the last may stay open).
      this.#encoder.flush();
    }
    if (pass.page >= region.pages) {
      pass.region++;
      pass.page = 0;
    }
    if (pass.region >= device.regions.length) this.#endPass(pass);
  }

  #endPass(pass: Pass): void {
    this.#pass = undefined;
    for (const bitmap of pass.selected) bitmap?.free();
    if (pass.initial) this.#freeZeroPages();
    if (this.#stopped) {
      if (pass.initial) this.#initialDone = true;
      return;
    }
    const device = this.#device;
    let dirty = 0;
    device.regions.forEach((r, i) => (dirty += device.collect(i, r.pages)));
    this.#rounds.push(this.#encoder.endRound(dirty * device.pageSize));
    // Only now: endRound hands over the pass's last record and the round marker, which are
    // still initial data (counted as dirty, they would show in PRE_COPY info's dirty bytes).
    if (pass.initial) this.#initialDone = true;
  }

  /**
   * Stream bytes the rest of `pass` will produce, estimated: the pages still to send (the first
   * pass leaves out pages that were zero when it began), a record header per region, and the
   * pass's closing record. Never 0 while a pass is on: it always ends with a record.
   */
  #passEstimate(pass: Pass): number {
    const device = this.#device;
    const count = core().exports.bitmap_count;
    let bytes = CLOSING_RECORD;
    device.regions.forEach((r, i) => {
      if (i < pass.region) return;
      const from = i === pass.region ? pass.page : 0;
      if (from >= r.pages) return;
      const selected = pass.selected[i];
      let pages: number;
      if (!selected) {
        const zero = this.#zeroPagesNow()[i];
        pages = r.pages - from - (zero ? (count(zero.ptr, r.pages) >>> 0) - (count(zero.ptr, from) >>> 0) : 0);
      } else {
        pages = (count(selected.ptr, r.pages) >>> 0) - (count(selected.ptr, from) >>> 0);
      }
      bytes += this.#pageBytes(pages) + RECORD_OVERHEAD;
    });
    return bytes;
  }

  /**
   * Stream bytes `pages` pages will take: whole pages, or with LZ4 what the session measured
   * on the pages it sent (a sample of the content before it sent enough).
   */
  #pageBytes(pages: number): number {
    const bytes = pages * this.#device.pageSize;
    if (!this.#compressed || bytes === 0) return bytes;
    const ratio = measuredLz4Ratio(this.#encoder.summary(), this.#device.pageSize) ?? (this.#sampledRatio ??= sampleLz4Ratio(this.#device));
    return Math.ceil(bytes * ratio);
  }
}
