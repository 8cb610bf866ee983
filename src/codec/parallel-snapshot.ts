// Whole states in memory, encoded and decoded with `jobs` threads: the asynchronous twins of
// encodeSnapshot and decodeSnapshot (same bytes, same results, same errors). Where the runtime
// cannot run a pool (see poolUnavailable), they work on one thread and report why.
import { concatBytes } from "../core/bytes.js";
import { MigrationError } from "../core/errors.js";
import { checkJobs, createPool, type WorkerPool } from "../core/pool/pool.js";
import { xbzrleDecode } from "../core/xbzrle.js";
import { TAG_DELTA, TAG_PAGES, TAG_ZERO } from "../format/constants.js";
import type { StreamHeader } from "../format/header.js";
import type { DataRecord, DecodeTarget, DecoderOptions, TargetPlan } from "./decoder.js";
import { StreamEncoder } from "./encoder.js";
import { encodeRegionParallel } from "./parallel-encode.js";
import { ParallelDecoder } from "./parallel-decode.js";
import { decodeSnapshot, encodeSnapshot, type SnapshotEncodeOptions } from "./snapshot.js";

export interface JobsOption {
  /** Threads to work with (the worker pool). Default 1: the one-thread functions. */
  jobs?: number;
  /** A pool to use (and keep) instead of starting one for this call. */
  pool?: WorkerPool;
  /** Told why more than one job was asked but one thread does the work. */
  onnote?: (message: string) => void;
}

async function withPool<T>(options: JobsOption, serial: () => T, parallel: (pool: WorkerPool) => Promise<T>): Promise<T> {
  if (options.pool && !options.pool.closed) return parallel(options.pool);
  const jobs = checkJobs(options.jobs ?? 1);
  if (jobs === 1) return serial();
  const { pool, note } = createPool(jobs);
  if (note) options.onnote?.(note);
  if (!pool) return serial();
  try {
    return await parallel(pool);
  } finally {
    pool.close();
  }
}

/**
 * {@link encodeSnapshot} with `options.jobs` threads: the same bytes. Incremental streams
 * (`base`) are encoded on one thread.
 */
export function encodeSnapshotAsync(state: Uint8Array, options: SnapshotEncodeOptions & JobsOption = {}): Promise<Uint8Array> {
  const { jobs: _jobs, pool: _pool, onnote: _onnote, ...encodeOptions } = options;
  if (options.base) return Promise.resolve(encodeSnapshot(state, encodeOptions));
  return withPool(
    options,
    () => encodeSnapshot(state, encodeOptions),
    async (pool) => {
      if (!(state instanceof Uint8Array)) throw new MigrationError("EINVAL", "state must be a Uint8Array");
      const regions = encodeOptions.regions ?? [{ name: "state", size: state.length }];
      const total = regions.reduce((n, r) => n + r.size, 0);
      if (total !== state.length) throw new MigrationError("EINVAL", `regions add up to ${total} bytes, state is ${state.length}`);
      const parts: Uint8Array[] = [];
      const encoder = new StreamEncoder({ ...encodeOptions, regions, ondata: (chunk) => parts.push(chunk) });
      try {
        const { header } = encoder;
        let at = 0;
        for (let region = 0; region < regions.length; region++) {
          const start = at;
          await encodeRegionParallel(
            pool,
            encoder,
            { size: regions[region]!.size, read: (offset, into) => into.set(state.subarray(start + offset, start + offset + into.length)) },
            {
              pageSize: header.pageSize,
              maxRecordPayload: header.maxRecordPayload,
              checksum: header.checksum,
              compress: header.compression === "lz4",
              region,
            },
          );
          at += regions[region]!.size;
        }
        if (encodeOptions.config) encoder.writeConfig(encodeOptions.config);
        encoder.end();
      } catch (error) {
        encoder.abort();
        throw error;
      }
      return concatBytes(parts);
    },
  );
}

/** Applies records into a plain array (the decoder verified each one first). */
class ArrayTarget implements DecodeTarget {
  state = new Uint8Array(0);
  #pageSize = 0;
  /** A fresh array holds zeros: ZERO records come only over pages that may not (as in staging). */
  open(header: StreamHeader): TargetPlan {
    this.state = new Uint8Array(header.totalSize);
    this.#pageSize = header.pageSize;
    this.#starts = [0];
    for (const r of header.regions) this.#starts.push(this.#starts[this.#starts.length - 1]! + r.size);
    return { zeroRuns: { startsZeroed: true } };
  }
  #starts: number[] = [];
  apply(r: DataRecord): void {
    const at = this.#starts[r.region]! + r.offset;
    const end = Math.min(this.#starts[r.region + 1]!, at + r.pages * this.#pageSize);
    if (r.tag === TAG_PAGES) this.state.set(r.payload, at);
    else if (r.tag === TAG_ZERO) this.state.fill(0, at, end);
    else if (r.tag === TAG_DELTA) {
      const view = new DataView(r.payload.buffer, r.payload.byteOffset, r.payload.length);
      let q = 0;
      for (let page = at; page < end; page += this.#pageSize) {
        const length = view.getUint32(q, true);
        xbzrleDecode(r.payload.subarray(q + 4, q + 4 + length), this.state.subarray(page, Math.min(end, page + this.#pageSize)));
        q += 4 + length;
      }
    }
  }
  commit(): void {}
  abort(): void {}
}

/**
 * {@link decodeSnapshot} with `options.jobs` threads: the same state, or the same error.
 * Incremental streams (`base`) are decoded on one thread.
 */
export function decodeSnapshotAsync(stream: Uint8Array, options: DecoderOptions & JobsOption = {}): Promise<Uint8Array> {
  const { jobs: _jobs, pool: _pool, onnote: _onnote, ...decoderOptions } = options;
  if (options.base) return Promise.resolve(decodeSnapshot(stream, decoderOptions));
  return withPool(
    options,
    () => decodeSnapshot(stream, decoderOptions),
    async (pool) => {
      if (!(stream instanceof Uint8Array)) throw new MigrationError("EINVAL", "stream must be a Uint8Array");
      const target = new ArrayTarget();
      const decoder = new ParallelDecoder(pool, target, decoderOptions);
      try {
        await decoder.push(stream);
        await decoder.end();
      } catch (error) {
        await decoder.abort();
        throw error;
      }
      return target.state;
    },
  );
}
