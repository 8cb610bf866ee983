// Decoding and verifying on the worker pool. The stream is gathered into segments of whole
// records in the pool's shared memory; workers compute every record's checksum and decode its
// LZ4 block (assembly precheck_records), each over a part of the segment; then the one decoder
// on the main thread runs over the segment as it always does, taking those results instead of
// computing them. Every check, its order, the errors (code, record, offset) and what reaches the
// target are the decoder's own: the pool only did some of its arithmetic ahead of it.
import { CoreBuffer } from "../core/buffer.js";
import { MigrationError } from "../core/errors.js";
import type { Core } from "../core/instance.js";
import { settleAll, type WorkerPool } from "../core/pool/pool.js";
import { DEFAULT_LIMITS, HEADER_PREFIX, RECORD_OVERHEAD, TAG_DELTA } from "../format/constants.js";
import { parseHeaderPrefix } from "../format/header.js";
import { type DataRecord, type DecodeTarget, type DecoderOptions, type DecoderSummary, StreamDecoder } from "./decoder.js";

/**
 * Stream bytes per thread per segment (default), one part each: small enough that a segment
 * read into memory is still in the processor's cache when the threads check it and the decoder
 * runs over it. Measured through the CLI on 2 threads (a 1 GiB state's LZ4 stream, 6 rounds
 * each, medians): verify took 193-198 ms with this, 211 ms with 8 MiB per thread in two parts
 * each (the sizes before), 214 ms with 4 MiB in one part, 308 ms with 1 MiB (parts of one or
 * two records, which differ too much in work: a raw record is hashed, an LZ4 one decoded too).
 */
const PART_BYTES = 2 << 20;
/** Bytes of one precheck entry (assembly/parallel.ts PRECHECK_ENTRY). */
const ENTRY = 32;

/** A buffer of stream bytes in pool memory, with the precheck results of its whole records. */
interface Segment {
  ptr: number;
  len: number;
  /** Stream offset of its first byte. */
  streamPos: number;
  /** Bytes of whole records sent to the workers. */
  whole: number;
  tables: number[];
  areas: number[];
  pending: Promise<unknown[][]> | undefined;
  /** The tasks behind `pending`. */
  tasks: Promise<unknown[]>[];
}

/**
 * A push decoder like {@link StreamDecoder} whose checksum and LZ4 work runs on `pool`, one
 * segment ahead of the decoder (two segments: the workers check one while the decoder runs
 * over the other). For targets that take records through `apply` (files, verification):
 * staging targets decode in the process's own core.
 */
export class ParallelDecoder {
  readonly #pool: WorkerPool;
  readonly #core: Core;
  readonly #decoder: StreamDecoder;
  readonly #maxHeader: number;
  readonly #maxRecord: number;
  readonly #taken: number[] = [];
  readonly #segments: Segment[] = [];
  #cur = 0;
  #segCap = 0;
  #threshold = 0;
  #tableCap = 0;
  #areaCap = 0;
  #headerTaken = false;
  readonly #payloads: boolean;
  /** Stream bytes per thread per segment. */
  readonly #partBytes: number;
  /** Parts a segment is cut into. */
  readonly #parts: number;
  /** Set when the stream stops framing: the rest goes to the decoder as it comes. */
  #direct = false;

  /**
   * `payloads` false: the target never reads a page record's bytes (verification), so LZ4
   * blocks are decoded by the workers only to check them, each over the last.
   */
  constructor(pool: WorkerPool, target: DecodeTarget, options: DecoderOptions = {}, payloads = true, partBytes = PART_BYTES) {
    this.#payloads = payloads;
    this.#partBytes = partBytes;
    this.#pool = pool;
    this.#parts = pool.jobs;
    this.#core = pool.core;
    this.#maxHeader = options.maxHeaderSize ?? DEFAULT_LIMITS.maxHeaderSize;
    this.#maxRecord = options.maxRecordPayload ?? DEFAULT_LIMITS.maxRecordPayload;
    this.#decoder = new StreamDecoder(adaptTarget(target), options, pool.core);
  }

  get header() {
    return this.#decoder.header;
  }

  get config(): Uint8Array | undefined {
    return this.#decoder.config;
  }

  summary(): DecoderSummary {
    return this.#decoder.summary();
  }

  /** Feeds stream bytes (any segmentation). */
  async push(chunk: Uint8Array): Promise<void> {
    let at = 0;
    while (at < chunk.length) {
      if (this.#direct) {
        this.#decoder.push(chunk.subarray(at));
        return;
      }
      const seg = this.#segment();
      const take = Math.min(this.#segCap - seg.len, chunk.length - at);
      this.#core.u8.set(chunk.subarray(at, at + take), seg.ptr + seg.len);
      seg.len += take;
      at += take;
      if (!this.#headerTaken) this.#takeHeader(seg, false);
      else if (seg.len >= this.#threshold) await this.#rotate(false);
    }
  }

  /**
   * Feeds the whole stream from `read`, which fills the view it is given with the next stream
   * bytes and returns how many (0: the stream ended; `end()` comes next). The bytes land in pool
   * memory directly: a file read this way is never copied on this thread.
   */
  async pushFrom(read: (into: Uint8Array) => number): Promise<void> {
    for (;;) {
      if (this.#direct) {
        // Past what frames, the decoder takes the rest as it comes (and names the problem).
        const rest = new Uint8Array(1 << 16);
        for (let n = read(rest); n > 0; n = read(rest)) this.#decoder.push(rest.subarray(0, n));
        return;
      }
      const seg = this.#segment();
      // The view is made after #segment(): allocating there may grow (and detach) the memory.
      // Up to the point where the segment goes to the workers, or, past it (a record longer
      // than what is left), up to its end.
      const room = seg.len < this.#threshold ? this.#threshold - seg.len : this.#segCap - seg.len;
      const n = read(new Uint8Array(this.#core.memory.buffer, seg.ptr + seg.len, room));
      if (n === 0) return;
      seg.len += n;
      if (!this.#headerTaken) this.#takeHeader(seg, false);
      else if (seg.len >= this.#threshold) await this.#rotate(false);
    }
  }

  /** Ends the stream: everything held is decoded, then the decoder checks it is complete. */
  async end(): Promise<void> {
    try {
      if (!this.#direct && this.#segments.length > 0) {
        const seg = this.#segments[this.#cur]!;
        if (!this.#headerTaken) this.#takeHeader(seg, true);
        if (!this.#direct) await this.#rotate(true);
      }
      this.#decoder.end();
    } finally {
      await this.#release();
    }
  }

  /** Gives up: the target is left as it was. */
  async abort(): Promise<void> {
    this.#decoder.abort();
    await this.#release();
  }

  #segment(): Segment {
    if (this.#segments.length === 0) {
      // A part per thread, and room beyond that for the header and a whole record of the
      // largest size allowed.
      this.#threshold = this.#pool.jobs * this.#partBytes;
      this.#segCap = this.#threshold + this.#maxHeader + this.#maxRecord + RECORD_OVERHEAD;
      // Entries for a segment of the smallest records (memory is touched only as entries are
      // written). The areas for decoded blocks come with the first records (their size
      // depends on the header).
      // A part ends at the first record boundary at or past its share of the segment: at most
      // that share's worth of the smallest records, and one more. (Sized per part, not per
      // segment: tables count against the pool's 4 GiB, untouched or not.)
      this.#tableCap = (Math.ceil(Math.ceil(this.#segCap / this.#parts) / RECORD_OVERHEAD) + 2) * ENTRY;
      for (let i = 0; i < 2; i++) {
        const seg: Segment = { ptr: this.#alloc(this.#segCap), len: 0, streamPos: 0, whole: 0, tables: [], areas: [], pending: undefined, tasks: [] };
        // The parts' tables in one block, in order: #decode moves every part's entries together
        // behind the first part's, which stays inside the block only if it is one.
        const tables = this.#alloc(this.#parts * this.#tableCap);
        for (let j = 0; j < this.#parts; j++) seg.tables.push(tables + j * this.#tableCap);
        this.#segments.push(seg);
      }
    }
    return this.#segments[this.#cur]!;
  }

  #alloc(size: number): number {
    const ptr = this.#core.alloc(size);
    this.#taken.push(ptr);
    return ptr;
  }

  async #release(): Promise<void> {
    // No worker may still be writing what is about to be freed.
    // After the end every task settled; after a failure, those not started are dropped.
    const tasks = this.#segments.flatMap((s) => s.tasks);
    this.#pool.cancel(tasks);
    await Promise.allSettled(tasks);
    for (const ptr of this.#taken.splice(0)) this.#core.free(ptr);
    this.#segments.length = 0;
    this.#areaCap = 0;
  }

  /** Hands the header to the decoder once it is all here (or everything, if it is malformed). */
  #takeHeader(seg: Segment, final: boolean): void {
    const u8 = this.#core.u8;
    const have = seg.len;
    let length: number;
    try {
      if (have < HEADER_PREFIX && !final) return;
      length = parseHeaderPrefix(u8.subarray(seg.ptr, seg.ptr + Math.min(have, HEADER_PREFIX)), this.#maxHeader);
    } catch {
      // The decoder says what is wrong with it, as it would without the pool.
      length = have;
    }
    if (have < length && !final) return;
    const take = Math.min(length, have);
    this.#headerTaken = true;
    this.#decoder.push(u8.slice(seg.ptr, seg.ptr + take));
    u8.copyWithin(seg.ptr, seg.ptr + take, seg.ptr + have);
    seg.len = have - take;
    seg.streamPos = take;
    if (!this.#decoder.header) this.#direct = true;
  }

  /**
   * Sends the current segment's whole records to the workers, decodes the other segment (sent
   * before) meanwhile, then carries the incomplete tail over into it and makes it current.
   */
  async #rotate(final: boolean): Promise<void> {
    const seg = this.#segments[this.#cur]!;
    const other = this.#segments[1 - this.#cur]!;
    const header = this.#decoder.header!;
    const k = this.#core.exports;
    const maxPayload = header.maxRecordPayload;
    const whole = k.frame_walk(seg.ptr, seg.len, maxPayload, seg.len) >>> 0;
    if (whole === 0 && !final && seg.len < this.#segCap) return;
    if (whole > 0) this.#dispatch(seg, whole, header.checksum === "crc32c" ? 2 : 1, header.compression === "lz4" ? 1 : 0, maxPayload);
    await this.#decode(other);
    const u8 = this.#core.u8;
    u8.copyWithin(other.ptr, seg.ptr + whole, seg.ptr + seg.len);
    other.len = seg.len - whole;
    other.streamPos = seg.streamPos + whole;
    seg.len = whole;
    this.#cur = 1 - this.#cur;
    if (whole === 0 || final) {
      // The rest: the records just sent, then what does not frame (the decoder reports it).
      await this.#decode(seg);
      this.#direct = true;
      if (other.len > 0) this.#decoder.push(u8.slice(other.ptr, other.ptr + other.len));
      other.len = 0;
    }
  }

  #dispatch(seg: Segment, whole: number, alg: number, lz4: number, maxPayload: number): void {
    if (this.#areaCap === 0) {
      // Decoded blocks for a part compressed 4:1 (LZ4 records past that are decoded by the
      // decoder itself); for verification, one record's worth, each block over the last.
      this.#areaCap = this.#payloads ? 4 * Math.ceil(this.#threshold / this.#parts) + maxPayload : maxPayload;
      for (const s of this.#segments) for (let j = 0; j < this.#parts; j++) s.areas.push(this.#alloc(this.#areaCap));
    }
    const k = this.#core.exports;
    const parts = this.#parts;
    const tasks: Promise<unknown[]>[] = [];
    let from = 0;
    for (let j = 1; j <= parts && from < whole; j++) {
      const to = j === parts ? whole : Math.max(from, k.frame_walk(seg.ptr, whole, maxPayload, Math.ceil((whole * j) / parts)) >>> 0);
      if (to > from) {
        const args: Array<number | bigint> = [seg.ptr + from, to - from, BigInt(seg.streamPos + from), alg, maxPayload, lz4];
        args.push(seg.tables[tasks.length]!, Math.floor(this.#tableCap / ENTRY), seg.areas[tasks.length]!, this.#areaCap, this.#payloads ? 1 : 0);
        tasks.push(this.#pool.run([["precheck_records", ...args]]));
      }
      from = to;
    }
    seg.whole = whole;
    seg.tasks = tasks;
    seg.pending = settleAll(tasks);
    // Awaited in #decode; a failure while nothing awaits it yet is not an unhandled one.
    seg.pending.catch(() => undefined);
  }

  /** Runs the decoder over a segment's whole records with the workers' results. */
  async #decode(seg: Segment): Promise<void> {
    if (!seg.pending) return;
    // This thread checks parts no worker took yet (the newest segment's first: workers take
    // the oldest) until this segment's are done.
    await this.#pool.help(
      this.#segments.flatMap((s) => s.tasks),
      seg.pending,
    );
    const counts = await seg.pending;
    seg.pending = undefined;
    // One table in stream order: the parts' entries moved together behind the first.
    const table = seg.tables[0]!;
    let entries = 0;
    counts.forEach((result, j) => {
      const n = (result[0] as number) >>> 0;
      if (j > 0 && n > 0) this.#core.u8.copyWithin(table + entries * ENTRY, seg.tables[j]!, seg.tables[j]! + n * ENTRY);
      entries += n;
    });
    this.#decoder.precheck(table, entries);
    try {
      this.#decoder.push(new Uint8Array(this.#core.memory.buffer, seg.ptr, seg.whole));
    } finally {
      this.#decoder.precheck(0, 0);
    }
    seg.whole = 0;
  }
}

/**
 * The target as the pool's decoder needs it: records only through `apply`, and DELTA records
 * with their payload in the process's core, where targets patch pages with the delta kernel.
 */
function adaptTarget(target: DecodeTarget): DecodeTarget {
  let staged: CoreBuffer | undefined;
  return {
    open(header) {
      const plan = target.open(header);
      if (Array.isArray(plan) || plan?.staging) throw new MigrationError("EINVAL", "a staging target decodes on one thread");
      return plan;
    },
    apply(record: DataRecord) {
      if (record.tag !== TAG_DELTA) return target.apply!(record);
      if (!staged || staged.length < record.payload.length) {
        staged?.free();
        staged = new CoreBuffer(Math.max(record.payload.length, 64 * 1024));
      }
      const view = staged.bytes.subarray(0, record.payload.length);
      view.set(record.payload);
      target.apply!({ ...record, payload: view });
    },
    commit() {
      staged?.free();
      target.commit();
    },
    abort() {
      staged?.free();
      target.abort();
    },
  };
}
