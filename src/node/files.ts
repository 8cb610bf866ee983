// Snapshots as files, streamed with positional I/O so memory stays bounded whatever their size:
// encoding reads windows of the snapshot (and its base) straight into core memory; decoding
// applies each verified record at its offset in a temporary output file, renamed only once the
// whole stream verified.
import { setImmediate as turn } from "node:timers/promises";
import { closeSync, createReadStream, fstatSync, ftruncateSync, openSync, read, readSync } from "node:fs";
import { CoreBuffer } from "../core/buffer.js";
import { MigrationError } from "../core/errors.js";
import { guarded } from "../core/instance.js";
import { createXxh3 } from "../core/xxh3.js";
import {
  type DataRecord,
  type DecodeTarget,
  type TargetPlan,
  type DecoderLimits,
  type DecoderOptions,
  type DecoderSummary,
  StreamDecoder,
} from "../codec/decoder.js";
import { type EncoderOptions, type EncoderSummary, StreamEncoder } from "../codec/encoder.js";
import { RECORD_OVERHEAD, TAG_DELTA, TAG_PAGES, TAG_ZERO } from "../format/constants.js";
import type { StreamHeader } from "../format/header.js";
import { AtomicFile, ioError, SYNC_AHEAD_BYTES } from "./atomic-file.js";
import { encodeRegionParallel } from "../codec/parallel-encode.js";
import { ParallelDecoder } from "../codec/parallel-decode.js";
import { checkJobs, createPool, type WorkerPool } from "../core/pool/pool.js";

const WINDOW = 4 << 20;
/** Granularity of FileTarget's record of which parts of a fresh output were written. */
const WRITTEN_CHUNK = 64 * 1024;

export interface EncodeFileOptions extends Omit<EncoderOptions, "ondata" | "regions" | "size" | "baseDigest"> {
  /** Path of the previous snapshot: the stream is then incremental against it. */
  base?: string;
  /** Device config blob to carry. */
  config?: Uint8Array;
  signal?: AbortSignal;
  /** Called after each window with bytes of snapshot done and the total. */
  onprogress?: (done: number, total: number) => void;
  /**
   * Called with the snapshot's bytes in order, each byte once, as read for the stream: what the
   * stream carries (a view valid during the call).
   */
  onwindow?: (view: Uint8Array) => void;
  /**
   * Threads to encode a full (non-incremental) stream with (the worker pool); the stream is
   * byte-identical to one thread's. Default 1. Incremental streams use one thread.
   */
  jobs?: number;
  /** A pool to use instead of starting one for this call (`jobs` is then the pool's). */
  pool?: WorkerPool;
  /** Told why more than one job was asked but one thread does the work. */
  onnote?: (message: string) => void;
  /**
   * With a pool: hand the records the threads encoded to `write` as views of the pool's memory,
   * not copies, and wait, before that memory is used again, until each was released. `write`
   * must then call `release` once it is done with a chunk (at once for a file written
   * synchronously, once the system took it for a stream), also when its output failed: until
   * then the encode waits, and on a failure it waits for the chunks `write` took before it
   * rejects. A `write` that rejects must be done with its own chunk by then. Saves copying the
   * stream, and the buffers the copies take (up to about 19 MiB at two threads). Default false.
   */
  lend?: boolean;
}

/** Reads exactly `view.length` bytes at `position` (files only grow short at EOF: an error). */
function readFully(fd: number, view: Uint8Array, position: number, what: string): void {
  let done = 0;
  while (done < view.length) {
    let n: number;
    try {
      n = readSync(fd, view, done, view.length - done, position + done);
    } catch (cause) {
      throw ioError(`cannot read ${what}`, cause);
    }
    if (n === 0) throw endedEarly(what, position + done);
    done += n;
  }
}

/** A file shorter than its size said when it was opened. */
function endedEarly(what: string, at: number): MigrationError {
  return new MigrationError("EIO", `${what} ended early at byte ${at} (file changed while reading?)`);
}

/** {@link readFully} off this thread (Node's thread pool); `view` must stay until it settles. */
function readFullyAsync(fd: number, view: Uint8Array, position: number, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const next = (done: number): void => {
      if (done === view.length) {
        resolve();
        return;
      }
      read(fd, view, done, view.length - done, position + done, (error, n) => {
        if (error) reject(ioError(`cannot read ${what}`, error));
        else if (n === 0) reject(endedEarly(what, position + done));
        else next(done + n);
      });
    };
    next(0);
  });
}

function openRead(path: string): { fd: number; size: number } {
  try {
    const fd = openSync(path, "r");
    return { fd, size: fstatSync(fd).size };
  } catch (cause) {
    throw ioError(`cannot open ${path}`, cause);
  }
}

/** XXH3-64 of a whole file, read in windows through core memory. */
export function digestFile(fd: number, size: number, what: string): bigint {
  const hasher = createXxh3();
  const window = new CoreBuffer(Math.min(WINDOW, Math.max(size, 1)));
  try {
    for (let at = 0; at < size; at += window.length) {
      const view = window.bytes.subarray(0, Math.min(window.length, size - at));
      readFully(fd, view, at, what);
      hasher.update(view);
    }
    return hasher.digest();
  } finally {
    window.free();
    hasher.free();
  }
}

/** Output chunks handed out again once their consumer released them. */
class ChunkPool {
  #free: Uint8Array[] = [];

  /** A copy of `view` (a view into the encoder's buffer) in reused memory where possible. */
  take(view: Uint8Array): Uint8Array {
    const i = this.#free.findIndex((b) => b.length >= view.length);
    // Headroom: the encoder's chunks vary a little around its 1 MiB drain size.
    const buffer = i >= 0 ? this.#free.splice(i, 1)[0]! : new Uint8Array(Math.max(view.length + (view.length >> 2), 2 << 20));
    buffer.set(view);
    return buffer.subarray(0, view.length);
  }

  give(chunk: Uint8Array): void {
    if (this.#free.length < 32) this.#free.push(new Uint8Array(chunk.buffer, 0, chunk.buffer.byteLength));
  }
}

/**
 * Encodes the snapshot file `input` as one stream, handing it to `write` chunk by chunk (each
 * awaited: backpressure). Memory use is a few windows, whatever the snapshot's size.
 *
 * A consumer that calls `release` once it is done with a chunk (a socket, once the kernel took
 * it) gets that memory back for a later chunk: fresh memory costs its first touch, so reusing it
 * matters at these sizes. Not calling it is fine (the chunk is then the consumer's), except
 * with `lend` (see there).
 */
export async function encodeFile(
  input: string,
  write: (chunk: Uint8Array, release: () => void) => Promise<void> | void,
  options: EncodeFileOptions = {},
): Promise<EncoderSummary> {
  const source = openRead(input);
  const base = options.base === undefined ? undefined : openRead(options.base);
  const buffers: CoreBuffer[] = [];
  let encoder: StreamEncoder | undefined;
  try {
    if (base && base.size !== source.size) {
      throw new MigrationError("EINVAL", `base snapshot is ${base.size} bytes, snapshot is ${source.size}: not the same device layout`);
    }
    const pageSize = options.pageSize ?? 4096;
    const window = Math.max(pageSize, Math.floor(WINDOW / pageSize) * pageSize);
    const baseDigest = base ? digestFile(base.fd, base.size, options.base!) : undefined;
    /** Chunks to write, in order; `lent` ones are views of the pool's memory. */
    const out: { chunk: Uint8Array; lent: boolean }[] = [];
    const { base: _base, config, signal, onprogress, onwindow, jobs: _jobs, pool: _pool, onnote: _onnote, lend, ...encoderOptions } = options;
    const pool = new ChunkPool();
    // The encoder's own views (valid during the call) are copied once, into pooled memory.
    encoder = new StreamEncoder(
      { ...encoderOptions, regions: [{ name: "state", size: source.size }], ...(baseDigest !== undefined ? { baseDigest } : {}) },
      (view) => out.push({ chunk: pool.take(view), lent: false }),
    );
    const flush = async (): Promise<void> => {
      /** Releases of the lent chunks `write` took: the pool reuses their memory after them. */
      const released: Promise<void>[] = [];
      try {
        for (const { chunk, lent } of out.splice(0)) {
          if (!lent) await write(chunk, () => pool.give(chunk));
          else {
            let release = (): void => undefined;
            const done = new Promise<void>((resolve) => (release = resolve));
            await write(chunk, release);
            released.push(done);
          }
        }
      } finally {
        // Also when a write failed: the memory is freed after this, and those taken before
        // may still be read until they are released.
        await Promise.all(released);
      }
    };
    const parallel = base ? undefined : poolFor(options);
    if (parallel) {
      try {
        const header = encoder.header;
        await encodeRegionParallel(
          parallel.pool,
          encoder,
          {
            size: source.size,
            read: (at, into) => readFully(source.fd, into, at, input),
            readAsync: (at, into) => readFullyAsync(source.fd, into, at, input),
          },
          {
            pageSize: header.pageSize,
            maxRecordPayload: header.maxRecordPayload,
            checksum: header.checksum,
            compress: header.compression === "lz4",
            flush,
            ...(lend ? { lend: (records: Uint8Array) => void out.push({ chunk: records, lent: true }) } : {}),
            // The bytes each window's records were encoded from (a window may be read again
            // from a record left open: those bytes count with the later read, the one sent).
            ...(onwindow ? { onbytes: onwindow } : {}),
            ...(signal ? { signal } : {}),
            ...(onprogress ? { onprogress: (done: number) => onprogress(done, source.size) } : {}),
          },
        );
      } finally {
        if (parallel.owned) parallel.pool.close();
      }
      if (config) encoder.writeConfig(config);
      encoder.end();
      await flush();
      return encoder.summary();
    }
    const data = new CoreBuffer(Math.min(window, Math.max(source.size, 1)));
    buffers.push(data);
    const shadow = base ? new CoreBuffer(data.length) : undefined;
    if (shadow) buffers.push(shadow);
    for (let at = 0; at < source.size; at += data.length) {
      if (signal?.aborted) throw new MigrationError("ECANCELED", "encode aborted");
      const length = Math.min(data.length, source.size - at);
      readFully(source.fd, data.bytes.subarray(0, length), at, input);
      if (shadow) readFully(base!.fd, shadow.bytes.subarray(0, length), at, options.base!);
      onwindow?.(data.bytes.subarray(0, length));
      encoder.writePages(0, at, data.bytes.subarray(0, length), shadow ? { shadow: shadow.bytes.subarray(0, length) } : {});
      await flush();
      onprogress?.(at + length, source.size);
    }
    if (config) encoder.writeConfig(config);
    encoder.end();
    await flush();
    return encoder.summary();
  } catch (error) {
    encoder?.abort();
    throw error;
  } finally {
    for (const b of buffers) b.free();
    closeSync(source.fd);
    if (base) closeSync(base.fd);
  }
}

/** The pool `options` ask for (undefined: one thread), and whether this call owns it. */
function poolFor(options: { jobs?: number; pool?: WorkerPool; onnote?: (message: string) => void }): { pool: WorkerPool; owned: boolean } | undefined {
  if (options.pool) return options.pool.closed ? undefined : { pool: options.pool, owned: false };
  const jobs = checkJobs(options.jobs ?? 1);
  if (jobs === 1) return undefined;
  const { pool, note } = createPool(jobs);
  if (note) options.onnote?.(note);
  return pool ? { pool, owned: true } : undefined;
}

/**
 * Applies verified records into a file: a temporary copy (of the base, for `apply`) that is
 * renamed over `path` only when the stream verified completely.
 */
class FileTarget implements DecodeTarget {
  readonly #path: string;
  readonly #base: string | undefined;
  #file: AtomicFile | undefined;
  /** Per region: its first and one-past-last byte in the file. */
  #bounds: { start: number; end: number }[] = [];
  #pageSize = 0;
  #scratch: CoreBuffer | undefined;
  #zeros = new Uint8Array(0);
  /**
   * One bit per WRITTEN_CHUNK of the file: set once anything was written there. A fresh output
   * starts as a sparse file of zeros, so ZERO records over chunks never written need no write
   * (a full stream's zero pages cost nothing, and repeated zero coverage costs no I/O).
   * Undefined when the file starts as a copy of a base: then every ZERO record is written.
   */
  #written: Uint8Array | undefined;

  constructor(path: string, base: string | undefined) {
    this.#path = path;
    this.#base = base;
  }

  open(header: StreamHeader): TargetPlan {
    this.#file = new AtomicFile(this.#path, this.#base);
    this.#pageSize = header.pageSize;
    let at = 0;
    this.#bounds = header.regions.map((r) => {
      const bounds = { start: at, end: at + r.size };
      at += r.size;
      return bounds;
    });
    if (this.#base === undefined) this.#written = new Uint8Array(Math.ceil(header.totalSize / WRITTEN_CHUNK / 8));
    try {
      // Sized up front, so positional writes can land anywhere (and a base of another size
      // never leaves a tail behind).
      ftruncateSync(this.#file.fd, header.totalSize);
    } catch (cause) {
      throw ioError(`cannot size ${this.#file.path}`, cause);
    }
    // ZERO records arrive only over pages not already zero in the file: a new file (sized
    // sparse) starts all zeros, so repeated zero coverage never writes anything twice.
    return { zeroRuns: { startsZeroed: this.#base === undefined } };
  }

  apply(record: DataRecord): void {
    const file = this.#file!;
    const { start, end } = this.#bounds[record.region]!;
    const at = start + record.offset;
    // A region's last page may be partial: a record never covers bytes past its region's end.
    const covered = Math.min(record.pages * this.#pageSize, end - at);
    if (record.tag === TAG_PAGES) {
      this.#mark(at, record.payload.length);
      file.writeAt(record.payload, at);
    } else if (record.tag === TAG_ZERO) {
      this.#writeZeros(at, covered);
    } else if (record.tag === TAG_DELTA) {
      this.#mark(at, covered);
      this.#applyDelta(record, at, covered);
    }
  }

  #mark(at: number, length: number): void {
    const written = this.#written;
    if (!written || length === 0) return;
    for (let c = Math.floor(at / WRITTEN_CHUNK), last = Math.floor((at + length - 1) / WRITTEN_CHUNK); c <= last; c++) written[c >>> 3]! |= 1 << (c & 7);
  }

  /** Zeros over [at, at + length): written only where the file may hold something else. */
  #writeZeros(at: number, length: number): void {
    const written = this.#written;
    const end = at + length;
    for (let from = at; from < end; ) {
      const chunk = Math.floor(from / WRITTEN_CHUNK);
      const to = Math.min(end, (chunk + 1) * WRITTEN_CHUNK);
      if (!written || written[chunk >>> 3]! & (1 << (chunk & 7))) {
        if (this.#zeros.length < to - from) this.#zeros = new Uint8Array(WRITTEN_CHUNK);
        this.#file!.writeAt(this.#zeros.subarray(0, to - from), from);
      }
      from = to;
    }
  }

  /**
   * Patches the pages of a DELTA record in the file, a batch of pages at a time: one record may
   * cover far more pages than its payload's size, and memory must not grow with that.
   */
  #applyDelta(record: DataRecord, at: number, covered: number): void {
    const file = this.#file!;
    const pageSize = this.#pageSize;
    const batchPages = Math.max(1, Math.floor(WINDOW / pageSize));
    // The payload lives in core memory (the decoder's window). Its offset is taken before
    // anything is allocated: growth detaches the view, and a detached view's offset reads 0.
    let entries = record.payload.byteOffset;
    this.#scratch ??= new CoreBuffer(batchPages * pageSize);
    const scratch = this.#scratch;
    for (let page = 0; page < record.pages; page += batchPages) {
      const count = Math.min(batchPages, record.pages - page);
      const offset = page * pageSize;
      const length = Math.min(count * pageSize, covered - offset);
      const pages = scratch.bytes.subarray(0, length);
      readFully(file.fd, pages, at + offset, file.path);
      const used = guarded((c) => c.exports.apply_delta_run(entries, count, scratch.ptr, Math.log2(pageSize), length));
      if (used < 0) throw new MigrationError("EBADMSG", `malformed XBZRLE delta in the record at region offset ${record.offset}`);
      entries += used;
      file.writeAt(pages, at + offset);
    }
  }

  commit(): void {
    this.#release();
    this.#file?.commit();
  }

  abort(): void {
    this.#release();
    this.#file?.abort();
  }

  #release(): void {
    this.#scratch?.free();
    this.#scratch = undefined;
  }
}

/** Receives records and keeps nothing (verify, inspect); `onrecord` sees each one. */
class DiscardTarget implements DecodeTarget {
  readonly #onrecord: ((record: DataRecord) => void) | undefined;
  constructor(onrecord?: (record: DataRecord) => void) {
    this.#onrecord = onrecord;
  }
  open(): undefined {
    return undefined;
  }
  apply(record: DataRecord): void {
    this.#onrecord?.(record);
  }
  commit(): void {}
  abort(): void {}
}

/** Threads for decoding and verifying (see {@link EncodeFileOptions.jobs}). */
export interface JobsOptions {
  /** Threads to check and decode with (the worker pool); results identical to one thread's. Default 1. */
  jobs?: number;
  /** A pool to use instead of starting one for this call. */
  pool?: WorkerPool;
  /** Told why more than one job was asked but one thread does the work. */
  onnote?: (message: string) => void;
}

export interface DecodeFileOptions extends Omit<DecoderOptions, "base" | "baseDigest">, JobsOptions {
  /** Path of the base snapshot for incremental streams. */
  base?: string;
  signal?: AbortSignal;
  onprogress?: (bytes: number) => void;
}

/** A decoder fed with awaits: the worker pool's, or the one-thread decoder as it is. */
export interface AsyncDecoder {
  push(chunk: Uint8Array): Promise<void> | void;
  /** The pool's decoder: reads a {@link StreamFile} straight into its memory. */
  pushFrom?(read: (into: Uint8Array) => number): Promise<void>;
  end(): Promise<void> | void;
  /** Resolves once nothing of the decode runs any more (the pool's tasks included). */
  abort(): Promise<void> | void;
  summary(): DecoderSummary;
}

/**
 * The decoder `jobs` asks for over `target`: on the pool for targets that take records through
 * apply (the pool's decoder reads no in-memory base). `payloads` false: the target reads no page
 * record's bytes (verification).
 */
export function openDecoder(target: DecodeTarget, options: DecoderOptions, jobs: JobsOptions, payloads = true): AsyncDecoder & { close(): void } {
  const parallel = options.base ? undefined : poolFor(jobs);
  if (!parallel) {
    const decoder = new StreamDecoder(target, options);
    return Object.assign(decoder, { close: () => undefined });
  }
  const decoder = new ParallelDecoder(parallel.pool, target, options, payloads);
  return {
    push: (chunk) => decoder.push(chunk),
    pushFrom: (read) => decoder.pushFrom(read),
    end: () => decoder.end(),
    abort: () => decoder.abort(),
    summary: () => decoder.summary(),
    close: () => {
      if (parallel.owned) parallel.pool.close();
    },
  };
}

/**
 * A stream in a file. Iterated, it is a read stream (its reads run beside the decoder, on
 * libuv's threads); a decoder on the worker pool instead reads it with {@link readInto} straight
 * into the pool's memory, with no copy on this thread.
 */
export class StreamFile implements AsyncIterable<Uint8Array> {
  readonly path: string;
  #fd: number | undefined;
  #position = 0;

  constructor(path: string) {
    this.path = path;
  }

  [Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    return createReadStream(this.path, { highWaterMark: 1 << 20 })[Symbol.asyncIterator]();
  }

  /** Reads the next bytes of the file into `into`; returns how many (0 at its end). */
  readInto(into: Uint8Array): number {
    if (this.#fd === undefined) this.#fd = openRead(this.path).fd;
    let n: number;
    try {
      n = readSync(this.#fd, into, 0, into.length, this.#position);
    } catch (cause) {
      throw ioError(`cannot read ${this.path}`, cause);
    }
    this.#position += n;
    return n;
  }

  close(): void {
    if (this.#fd !== undefined) closeSync(this.#fd);
    this.#fd = undefined;
  }
}

/** Bytes of a stream file read at a time by a one-thread decoder. */
const FEED_WINDOW = 4 << 20;

/** What a decoder reads: chunks, or a {@link StreamFile}. */
export type StreamSource = AsyncIterable<Uint8Array> | Iterable<Uint8Array>;

/**
 * Feeds all of `source` to `decoder` (not its end): a {@link StreamFile} straight into the
 * pool's memory when the decoder runs on the pool, chunks otherwise. `onbytes` gets the bytes fed
 * so far after each step.
 */
export async function feedDecoder(decoder: AsyncDecoder, source: StreamSource, onbytes?: (bytes: number) => void, signal?: AbortSignal): Promise<void> {
  let bytes = 0;
  const aborted = (): void => {
    if (signal?.aborted) throw new MigrationError("ECANCELED", "decode aborted");
  };
  if (source instanceof StreamFile) {
    const read = (into: Uint8Array): number => {
      aborted();
      const n = source.readInto(into);
      bytes += n;
      if (n > 0) onbytes?.(bytes);
      return n;
    };
    try {
      if (decoder.pushFrom) await decoder.pushFrom(read);
      else {
        // One thread: windows of the file read into core memory, which the decoder parses in
        // place (no copy, no read stream).
        const window = new CoreBuffer(FEED_WINDOW);
        try {
          let sinceTurn = 0;
          for (let n = read(window.bytes); n > 0; n = read(window.bytes)) {
            await decoder.push(window.bytes.subarray(0, n));
            // A turn of the event loop now and then (a turn per window cost a verify 2-3%): the
            // output's background flushes (one per SYNC_AHEAD_BYTES written) and signals are
            // handled as the decode goes, not all after it.
            sinceTurn += n;
            if (sinceTurn >= SYNC_AHEAD_BYTES) {
              sinceTurn = 0;
              await turn();
            }
          }
        } finally {
          window.free();
        }
      }
    } finally {
      source.close();
    }
    return;
  }
  for await (const chunk of source) {
    aborted();
    await decoder.push(chunk);
    bytes += chunk.length;
    onbytes?.(bytes);
  }
}

/**
 * Decodes a stream into the snapshot file `output` (written atomically), or, with `output`
 * undefined, only verifies it. Resolves with the decoder's summary.
 */
export async function decodeToFile(source: StreamSource, output: string | undefined, options: DecodeFileOptions = {}): Promise<DecoderSummary> {
  const { base, signal, onprogress, jobs, pool, onnote, ...decoderOptions } = options;
  const baseFile = base === undefined ? undefined : openRead(base);
  const target = output === undefined ? new DiscardTarget() : new FileTarget(output, base);
  let decoder: ReturnType<typeof openDecoder> | undefined;
  try {
    decoder = openDecoder(
      target,
      { ...decoderOptions, ...(baseFile ? { baseDigest: () => digestFile(baseFile.fd, baseFile.size, base!) } : {}) },
      { ...(jobs !== undefined ? { jobs } : {}), ...(pool ? { pool } : {}), ...(onnote ? { onnote } : {}) },
      output !== undefined,
    );
    await feedDecoder(decoder, source, onprogress, signal);
    await decoder.end();
    return decoder.summary();
  } catch (error) {
    await decoder?.abort();
    throw error;
  } finally {
    decoder?.close();
    if (baseFile) closeSync(baseFile.fd);
  }
}

/**
 * A push decoder that applies verified records into a temporary file beside `output`; `end()`
 * verifies the whole stream, then fsyncs and renames the file over `output` (receive).
 */
export function createFileDecoder(output: string, options: Omit<DecoderOptions, "base" | "baseDigest"> = {}): StreamDecoder {
  return new StreamDecoder(new FileTarget(output, undefined), options);
}

export interface InspectReport {
  summary: DecoderSummary;
  /** Stream bytes of page records by kind (record framing included). */
  bytesByKind: { pages: number; lz4: number; zero: number; delta: number };
  /** The first problem found, if any: the stream is valid when this is undefined. */
  problem: MigrationError | undefined;
}

/**
 * Reads a whole stream, keeping nothing, and reports what it holds and the first problem found
 * (with its record index and byte offset) instead of throwing.
 */
export async function inspectStream(
  source: StreamSource,
  options: DecoderLimits = {},
  jobs: JobsOptions = {},
  onbytes?: (bytes: number) => void,
): Promise<InspectReport> {
  const bytesByKind = { pages: 0, lz4: 0, zero: 0, delta: 0 };
  const kinds: Record<number, keyof typeof bytesByKind> = { [TAG_PAGES]: "pages", [TAG_ZERO]: "zero", [TAG_DELTA]: "delta" };
  const decoder = openDecoder(
    new DiscardTarget((record) => {
      // LZ4 records arrive decoded (as PAGES) with their wire payload size in `packed`.
      if (record.packed !== undefined) bytesByKind.lz4 += record.packed + RECORD_OVERHEAD;
      else {
        const kind = kinds[record.tag];
        if (kind) bytesByKind[kind] += record.payload.length + RECORD_OVERHEAD;
      }
    }),
    // Inspection reports incremental streams without their base: it checks everything else.
    { ...options, baseDigest: (header) => header.baseDigest! },
    jobs,
    false,
  );
  let problem: MigrationError | undefined;
  try {
    await feedDecoder(decoder, source, onbytes);
    await decoder.end();
  } catch (error) {
    await decoder.abort();
    if (!(error instanceof MigrationError)) throw error;
    problem = error;
  } finally {
    decoder.close();
  }
  return { summary: decoder.summary(), bytesByKind, problem };
}
