// Full-state encoding on the worker pool: the state is read in windows into the pool's shared
// memory, the main thread plans where records will start (assembly encode_plan, the encoder's
// own rules without writing anything), cuts each window there into chunks that workers encode
// (records numbered where the plan says they start), and splices the chunks back in order into
// a StreamEncoder, which chains the stream digest over them and writes everything else (header,
// config, rounds, end). The result is byte for byte the stream of one thread.
import { MigrationError } from "../core/errors.js";
import type { Core } from "../core/instance.js";
import { settleAll, type WorkerPool } from "../core/pool/pool.js";
import { RECORD_OVERHEAD, TAG_PAGES, TAG_ZERO } from "../format/constants.js";
import { ContextView, Enc, EncMode } from "./contexts.js";
import type { StreamEncoder } from "./encoder.js";

/**
 * Where the state comes from: `read` fills `into` with the bytes at state offset `at`.
 * `readAsync`, where there is one, does the same off this thread (a file read by Node's thread
 * pool): the next window is then read while this one is encoded.
 */
export interface StateSource {
  readonly size: number;
  read(at: number, into: Uint8Array): void;
  readAsync?(at: number, into: Uint8Array): Promise<void>;
}

/** A planned chunk: window pages [start, end), and a ZERO record it continues, if any. */
interface Chunk {
  start: number;
  end: number;
  init: { offset: bigint; pages: number } | undefined;
  seq: number;
  seqEnd: number;
}

/** Bytes of state per chunk (a worker's unit of work) when records are small. */
const CHUNK_BYTES = 2 << 20;
/**
 * Chunks per thread in a window. Every window costs a round of dispatch, splice and flush that
 * the threads wait through; measured in-process on 1 GiB (8 rounds each), 2 threads took 528 ms
 * with 2 chunks per thread, 494 with 3, 449 with 4 and no less with 6 or 8 (one thread: 624).
 */
const CHUNKS_PER_JOB = 4;
/**
 * Windows in turn: one encoded by the threads while the next is read into the other (off this
 * thread where the source can), once the window before had all its chunks encoded. A third
 * window, so that the read could start before that, measured no faster (CLI encode of 1 GiB at
 * --jobs 2, medians of 8: 924 against 928 ms) and took 16 MiB more at --jobs 2.
 */
const WINDOWS = 2;
/**
 * Output slots beyond one window's chunks, per thread: what the threads encode into while the
 * window before is spliced and written (a worker is handed two tasks at a time). A set of
 * slots per window, 10 more at --jobs 2, measured no faster (916 against 928 ms); none beyond
 * a window's left the threads idle during the splice (984 ms).
 */
const SPARE_SLOTS_PER_JOB = 2;

/** Per in-flight chunk: the encoder context, output and scratch the worker encodes with. */
interface Slot {
  ctx: ContextView;
  out: number;
  outCap: number;
  scratch: number;
  lz4: number;
}

export interface ParallelEncodeOptions {
  pageSize: number;
  maxRecordPayload: number;
  checksum: "xxh3" | "crc32c";
  compress: boolean;
  /** Called after each window with the state bytes done. */
  onprogress?: (done: number) => void;
  /**
   * Called with the bytes of each window the stream is made of, in order, each byte once: a
   * window that ends inside a raw record is read again from the record's first page, and the
   * record is encoded from that later read, so those bytes are handed over with it (a view valid
   * during the call).
   */
  onbytes?: (view: Uint8Array) => void;
  /** Awaited after each window's records went to the encoder (drain its output here). */
  flush?: () => Promise<void>;
  /**
   * Given, each chunk's records come here instead of the encoder's output, in stream order
   * after whatever the encoder wrote before them: views of the pool's memory, not copies, that
   * stay valid until the `flush` after them resolved (the chunk's memory is reused then).
   */
  lend?: (records: Uint8Array) => void;
  signal?: AbortSignal;
  /** State bytes per chunk, a worker's unit of work (default 2 MiB; at least two records). */
  chunkBytes?: number;
  /** The region `source` holds (default 0). */
  region?: number;
}

/**
 * Encodes a whole region (`options.region`, default 0) of `encoder`'s full stream on `pool`,
 * `source.size` bytes. The encoder's earlier records must be closed (the region before, a
 * config, a round); what follows is the caller's.
 */
export async function encodeRegionParallel(pool: WorkerPool, encoder: StreamEncoder, source: StateSource, options: ParallelEncodeOptions): Promise<void> {
  const run = new ParallelRun(pool, encoder, options);
  try {
    await run.encode(source);
  } finally {
    run.release();
  }
}

class ParallelRun {
  readonly #pool: WorkerPool;
  readonly #core: Core;
  readonly #encoder: StreamEncoder;
  readonly #options: ParallelEncodeOptions;
  readonly #pageSize: number;
  readonly #windowBytes: number;
  readonly #chunkPages: number;
  readonly #taken: number[] = [];
  readonly #windows: number[] = [];
  /** Slots no chunk holds: a chunk takes one when dispatched, and gives it back once its records were written. */
  readonly #free: Slot[] = [];
  readonly #plan: ContextView;
  /** The ZERO record still open at the end of the last window planned. */
  #carry: { offset: bigint; pages: number } | undefined;
  #seq: number;

  constructor(pool: WorkerPool, encoder: StreamEncoder, options: ParallelEncodeOptions) {
    this.#pool = pool;
    this.#core = pool.core;
    this.#encoder = encoder;
    this.#options = options;
    const { pageSize, maxRecordPayload } = options;
    this.#pageSize = pageSize;
    const chunk = Math.max(options.chunkBytes ?? CHUNK_BYTES, 2 * maxRecordPayload);
    this.#chunkPages = Math.max(8, Math.floor(chunk / pageSize));
    // WINDOWS windows, each CHUNKS_PER_JOB chunks for every thread (several, so that the
    // calling thread, which also reads, plans and splices, can take fewer than the workers),
    // and always more than a record so the plan moves forward. No larger than that pays for:
    // every buffer here is first touched by each process (about 3 ms per MiB on a VM).
    // (Large records make large chunks: then one per thread, as memory is bounded at 4 GiB.)
    const perJob = chunk <= CHUNK_BYTES ? CHUNKS_PER_JOB : 1;
    this.#windowBytes = Math.max(perJob * pool.jobs * this.#chunkPages * pageSize, 2 * maxRecordPayload + pageSize);
    const c = this.#core;
    const k = c.exports;
    const ctxSize = k.encode_context_size();
    this.#plan = new ContextView(c.memory, this.#alloc(ctxSize));
    const perWindow = Math.ceil(this.#windowBytes / (this.#chunkPages * pageSize)) + 2;
    // A chunk reaches back at most one record before its planned start.
    const chunkMax = this.#chunkPages * pageSize + maxRecordPayload + pageSize;
    const outCap = chunkMax + Math.ceil(chunkMax / pageSize) * RECORD_OVERHEAD + maxRecordPayload + 2 * RECORD_OVERHEAD + 64;
    const lz4Size = options.compress ? k.encode_lz4_scratch_size(maxRecordPayload) >>> 0 : 0;
    for (let w = 0; w < WINDOWS; w++) this.#windows.push(this.#alloc(this.#windowBytes));
    // A chunk holds its slot from dispatch until its records were written: one window's chunks
    // and the spare ones the next window starts on. (Large chunks, one per thread, have a
    // window's worth of spares, as before: their slots are several records each, and more of
    // them would not fit the 4 GiB memory at 3 threads and 48 MiB records.)
    const spare = perJob > 1 ? SPARE_SLOTS_PER_JOB * pool.jobs : perWindow;
    for (let i = 0; i < perWindow + spare; i++) {
      this.#free.push({
        ctx: new ContextView(c.memory, this.#alloc(ctxSize)),
        out: this.#alloc(outCap),
        outCap,
        scratch: this.#alloc(pageSize + 64),
        lz4: lz4Size > 0 ? this.#alloc(lz4Size) : 0,
      });
    }
    this.#seq = encoder.nextRecordIndex;
  }

  #alloc(size: number): number {
    const ptr = this.#core.alloc(size);
    this.#taken.push(ptr);
    return ptr;
  }

  release(): void {
    for (const ptr of this.#taken.splice(0)) this.#core.free(ptr);
  }

  async encode(source: StateSource): Promise<void> {
    const size = source.size;
    let at = 0;
    let w = 0;
    let pending: { chunks: Chunk[]; tasks: Promise<unknown[]>[]; slots: Slot[]; done: number } | undefined;
    /** Every task handed out and not yet spliced: what a failure must wait for. */
    const inFlight = new Set<Promise<unknown[]>>();
    /** The read of the next window, when it runs off this thread. */
    let reading: Promise<void> | undefined;
    const view = (w: number, length: number) => new Uint8Array(this.#core.memory.buffer, this.#windows[w % WINDOWS]!, length);
    const startRead = (w: number, at: number): void => {
      const length = Math.min(this.#windowBytes, size - at);
      reading = source.readAsync ? source.readAsync(at, view(w, length)) : undefined;
      reading?.catch(() => undefined);
    };
    /** Splices the pending window's results; `onencoded` runs once its chunks were encoded. */
    const finish = async (onencoded?: () => void): Promise<void> => {
      if (!pending) return onencoded?.();
      const { chunks, tasks, slots, done } = pending;
      pending = undefined;
      // This thread runs queued tasks (the newest window's first: the workers take the
      // oldest) until this window is done.
      const settled = settleAll(tasks);
      settled.catch(() => undefined);
      await this.#pool.help(inFlight, settled);
      const results = await settled;
      for (const task of tasks) inFlight.delete(task);
      onencoded?.();
      chunks.forEach((chunk, i) => this.#splice(chunk, slots[i]!, results[i]!));
      await this.#options.flush?.();
      this.#free.push(...slots);
      this.#options.onprogress?.(done);
    };
    try {
      startRead(0, 0);
      while (at < size || (size === 0 && at === 0 && w === 0)) {
        if (this.#options.signal?.aborted) throw new MigrationError("ECANCELED", "encode aborted");
        const window = this.#windows[w % WINDOWS]!;
        const length = Math.min(this.#windowBytes, size - at);
        if (reading) {
          // The workers go on with the last window meanwhile, and this thread with them.
          await this.#pool.help(inFlight, reading);
          await reading;
          reading = undefined;
        } else source.read(at, view(w, length));
        const last = at + length === size;
        const { chunks, next } = this.#planWindow(window, at, length, last);
        this.#options.onbytes?.(new Uint8Array(this.#core.memory.buffer, window, (last ? at + length : next) - at));
        // As many chunks go out as there are free slots now, the rest once the window before
        // was spliced and written.
        const slots: Slot[] = [];
        const tasks: Promise<unknown[]>[] = [];
        const dispatch = (): void => {
          while (tasks.length < chunks.length && this.#free.length > 0) {
            const slot = this.#free.pop()!;
            slots.push(slot);
            const task = this.#dispatch(chunks[tasks.length]!, slot, window, at, length);
            inFlight.add(task);
            tasks.push(task);
          }
        };
        dispatch();
        // While this window is encoded, the next is read into the window before's memory (once
        // that was encoded) and the window before's results go out.
        await finish(last ? undefined : () => startRead(w + 1, next));
        dispatch();
        if (tasks.length < chunks.length) throw new MigrationError("EFAULT", `internal: ${chunks.length} chunks planned for ${slots.length} slots`);
        pending = { chunks, tasks, slots, done: last ? size : next };
        at = next;
        w++;
        if (last) break;
      }
      await finish();
    } catch (error) {
      // Nothing may still be writing the memory about to be released: the tasks not started
      // are dropped, those running are waited for (whichever window they belong to), and so
      // is a read under way.
      const tasks = [...inFlight];
      this.#pool.cancel(tasks);
      await Promise.allSettled([...tasks, ...(reading ? [reading] : [])]);
      throw error;
    }
  }

  /** Plans window [at, at+length) of the region; returns its chunks and where to read next. */
  #planWindow(window: number, at: number, length: number, last: boolean): { chunks: Chunk[]; next: number } {
    const k = this.#core.exports;
    const ctx = this.#plan;
    const pageSize = this.#pageSize;
    const base = BigInt(at);
    this.#core.u8.fill(0, ctx.ptr, ctx.ptr + k.encode_context_size());
    ctx.setU32(Enc.CUR, window);
    ctx.setU32(Enc.LEN, length);
    ctx.setU32(Enc.PAGE, pageSize);
    ctx.setU32(Enc.MAXPAYLOAD, this.#options.maxRecordPayload);
    ctx.setU64(Enc.OFFSET, base);
    ctx.setU16(Enc.REGION, this.#options.region ?? 0);
    ctx.setU32(Enc.SEQ, this.#seq);
    if (this.#carry) {
      ctx.setU8(Enc.REC_TAG, TAG_ZERO);
      ctx.setU16(Enc.REC_REGION, this.#options.region ?? 0);
      ctx.setU64(Enc.REC_OFFSET, this.#carry.offset);
      ctx.setU32(Enc.REC_PAGES, this.#carry.pages);
    }
    const pages = Math.ceil(length / pageSize);
    const chunks: Chunk[] = [];
    let start = 0;
    let init = this.#carry;
    let seqStart = this.#seq;
    const emit = (end: number, seqEnd: number): void => {
      if (end > start || init) chunks.push({ start, end, init, seq: seqStart, seqEnd });
    };
    for (let target = this.#chunkPages; ; target += this.#chunkPages) {
      const stop = Math.min(target, pages);
      k.encode_plan(ctx.ptr, stop);
      const tag = ctx.u8(Enc.REC_TAG);
      const seqNow = ctx.u32(Enc.SEQ);
      if (stop === pages && last) {
        emit(pages, seqNow + (tag !== 0 ? 1 : 0));
        this.#carry = undefined;
        this.#seq = seqNow + (tag !== 0 ? 1 : 0);
        return { chunks, next: at + length };
      }
      const recOffset = ctx.u64(Enc.REC_OFFSET);
      const recStart = Number(recOffset - base) / pageSize;
      if (tag === 0) {
        emit(stop, seqNow);
        start = stop;
        init = undefined;
        seqStart = seqNow;
      } else if (tag === TAG_ZERO) {
        if (recStart >= start) {
          emit(recStart, seqNow);
          seqStart = seqNow;
        }
        start = stop;
        init = { offset: recOffset, pages: ctx.u32(Enc.REC_PAGES) };
      } else if (tag === TAG_PAGES) {
        emit(recStart, seqNow);
        start = recStart;
        init = undefined;
        seqStart = seqNow;
      }
      if (stop === pages) {
        // The record still open continues in the next window: a ZERO one as carried state, a
        // raw one by reading the next window from its first page.
        this.#carry = init;
        this.#seq = seqStart;
        return { chunks, next: at + start * pageSize };
      }
    }
  }

  #dispatch(chunk: Chunk, slot: Slot, window: number, at: number, length: number): Promise<unknown[]> {
    const pageSize = this.#pageSize;
    const ctx = slot.ctx;
    this.#core.u8.fill(0, ctx.ptr, ctx.ptr + this.#core.exports.encode_context_size());
    const from = chunk.start * pageSize;
    const to = Math.min(chunk.end * pageSize, length);
    ctx.setU32(Enc.CUR, window + from);
    ctx.setU32(Enc.LEN, Math.max(0, to - from));
    ctx.setU32(Enc.PAGE, pageSize);
    ctx.setU32(Enc.OUT, slot.out);
    ctx.setU32(Enc.OUTCAP, slot.outCap);
    ctx.setU32(Enc.MAXPAYLOAD, this.#options.maxRecordPayload);
    ctx.setU32(Enc.SEQ, chunk.seq);
    ctx.setU8(Enc.ALG, this.#options.checksum === "crc32c" ? 2 : 1);
    ctx.setU8(Enc.MODE, this.#options.compress ? EncMode.LZ4 : 0);
    ctx.setU64(Enc.OFFSET, BigInt(at + from));
    ctx.setU16(Enc.REGION, this.#options.region ?? 0);
    ctx.setU32(Enc.SCRATCH, slot.scratch);
    ctx.setU32(Enc.LZ4_SCRATCH, slot.lz4);
    if (chunk.init) {
      ctx.setU8(Enc.REC_TAG, TAG_ZERO);
      ctx.setU16(Enc.REC_REGION, this.#options.region ?? 0);
      ctx.setU64(Enc.REC_OFFSET, chunk.init.offset);
      ctx.setU32(Enc.REC_PAGES, chunk.init.pages);
    }
    return this.#pool.run([
      ["encode_window", ctx.ptr],
      ["encode_flush", ctx.ptr],
    ]);
  }

  #splice(chunk: Chunk, slot: Slot, results: unknown[]): void {
    const ctx = slot.ctx;
    const seq = ctx.u32(Enc.SEQ);
    if (results[0] !== 0 || seq !== chunk.seqEnd || chunk.seq !== this.#encoder.nextRecordIndex) {
      throw new MigrationError(
        "EFAULT",
        `internal: a pool chunk planned as records ${chunk.seq}..${chunk.seqEnd} came back as ..${seq} (status ${String(results[0])}) at record ${this.#encoder.nextRecordIndex}`,
      );
    }
    const c = this.#core;
    const length = ctx.u32(Enc.OUTLEN);
    const records = new Uint8Array(c.memory.buffer, slot.out, length);
    this.#encoder.spliceRecords(
      records,
      seq - chunk.seq,
      (digest) => BigInt.asUintN(64, c.exports.chain_records(digest, slot.out, length)),
      // A ZERO record the chunk continued brings pages no chunk counted (they were planned
      // into its open record, not encoded).
      (field) =>
        field === Enc.LZ4_PACKED || field === Enc.LZ4_COVERED ? ctx.u64(field) : ctx.u32(field) + (field === Enc.PAGES_ZERO ? (chunk.init?.pages ?? 0) : 0),
      this.#options.lend,
    );
  }
}
