// The saving side of a migration data session (the readable data_fd of VFIO v2): the device's
// state as a migstream stream, produced lazily one window per read. A pass sends pages (all of
// them first, then those that changed since); in pre-copy each pass ends with a round marker,
// and once the device is stopped a last pass, the config blob and the end record follow.
import { MigrationError } from "../core/errors.js";
import { StreamEncoder } from "../codec/encoder.js";
import { CoreBuffer } from "../core/buffer.js";
import { core } from "../core/instance.js";
import type { DeviceModel } from "../device/device-model.js";
import type { Compression } from "../format/constants.js";

/** Pages per encode call: 1 MiB at 4 KiB pages, and a whole number of bitmap bytes. */
const WINDOW_BYTES = 1 << 20;

export interface SavingOptions {
  deviceId: string;
  checksum?: "xxh3" | "crc32c";
  maxRecordPayload?: number;
  /** Page compression ("lz4": runs of raw pages as LZ4 records when smaller). Default "none". */
  compress?: Compression;
  /** True in PRE_COPY states: pre-copy rounds until the device stops. */
  precopy: boolean;
}

export interface PrecopyInfo {
  /** Initial data (the first pass over every page) not read yet. */
  initialBytes: number;
  /** Changed data not read yet: pages changed since sent, plus unread bytes of later passes. */
  dirtyBytes: number;
}

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
  #pass: Pass | undefined;
  #stopped: boolean;
  #config: Uint8Array | undefined;
  #ended = false;
  #closed = false;
  #initialDone = false;
  #initialQueued = 0;
  #initialReported = Infinity;
  #bytesRead = 0;
  readonly #rounds: { round: number; pages: number; bytes: number; dirtyBytes: number }[] = [];

  constructor(device: DeviceModel, options: SavingOptions) {
    this.#device = device;
    this.#stopped = !options.precopy;
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
        this.#queue.push(view.slice());
        this.#queued += view.length;
        if (!this.#initialDone) this.#initialQueued += view.length;
      },
    );
    device.resetTracking();
    this.#pass = { selected: device.regions.map(() => undefined), region: 0, page: 0, initial: true };
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
    this.#queued -= chunk.length;
    this.#initialQueued = Math.max(0, this.#initialQueued - chunk.length);
    this.#bytesRead += chunk.length;
    return chunk;
  }

  /** PRE_COPY info, as VFIO_MIG_GET_PRECOPY_INFO reports it. */
  precopyInfo(): PrecopyInfo {
    const device = this.#device;
    const pass = this.#pass;
    let initialBytes = this.#initialQueued;
    let dirtyBytes = this.#queued - this.#initialQueued;
    if (pass?.initial) initialBytes += this.#remainingPassBytes(pass);
    else if (pass) dirtyBytes += this.#remainingPassBytes(pass);
    device.regions.forEach((r, i) => {
      // During the first pass only pages already sent can be dirty.
      const upto = pass?.initial ? (i < pass.region ? r.pages : i === pass.region ? pass.page : 0) : r.pages;
      dirtyBytes += device.collect(i, upto) * device.pageSize;
    });
    // initial_bytes must only shrink as the first pass is read. The figure above can rise when
    // the encoder hands over a record it held open (counted neither as queued nor as pages
    // left), so report the smallest seen. It is 0 only once the first pass was all read.
    initialBytes = Math.min(initialBytes, this.#initialReported);
    this.#initialReported = initialBytes;
    return { initialBytes, dirtyBytes };
  }

  /** The device stopped (STOP_COPY): finish with a last pass, the config blob and the end. */
  stop(config: Uint8Array | undefined): void {
    this.#stopped = true;
    this.#config = config;
  }

  /** Ends the session (the arc out of the saving states). Releases the encoder. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (!this.#ended) this.#encoder.abort();
    for (const bitmap of this.#pass?.selected ?? []) bitmap?.free();
    this.#pass = undefined;
    this.#queue.length = 0;
    this.#queued = 0;
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
      const data = region.data.bytes.subarray(offset, end);
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

  #remainingPassBytes(pass: Pass): number {
    const device = this.#device;
    let pages = 0;
    device.regions.forEach((r, i) => {
      if (i < pass.region) return;
      const from = i === pass.region ? pass.page : 0;
      const selected = pass.selected[i];
      if (!selected) pages += r.pages - from;
      else {
        const count = core().exports.bitmap_count;
        pages += (count(selected.ptr, r.pages) >>> 0) - (count(selected.ptr, from) >>> 0);
      }
    });
    return pages * device.pageSize;
  }
}
