// Node stream and async-iterable adapters over the push-style codec. The codec itself is
// synchronous and I/O-free; these adapters only decide when to feed it and where its output
// goes, so that backpressure, errors and cancellation follow Node's stream conventions.
import { Transform, type TransformCallback } from "node:stream";
import type { DecoderOptions, DecoderSummary } from "../codec/decoder.js";
import { createEncoder, type EncoderOptions, type EncoderSummary, type StreamEncoder } from "../codec/encoder.js";
import { createDecoder, type StateDecoder } from "../codec/snapshot.js";
import { MigrationError } from "../core/errors.js";
import type { StreamHeader } from "../format/header.js";

/** Options of {@link createEncodeStream} and {@link encodeChunks}. */
export interface EncodeStreamOptions extends Omit<EncoderOptions, "ondata" | "baseDigest"> {
  /**
   * Device config blob, written after the state and before the end record. Copied when the
   * stream is created, so the caller may reuse its buffer.
   */
  config?: Uint8Array;
  /** Aborting it destroys the stream with MigrationError("ECANCELED") and frees the encoder. */
  signal?: AbortSignal;
}

/** Options of {@link decodeChunks} and {@link decodeChunksWithSummary}. */
export interface DecodeChunksOptions extends DecoderOptions {
  /** Aborting it fails the decode with MigrationError("ECANCELED") and frees the decoder. */
  signal?: AbortSignal;
}

/** Options of {@link createDecodeStream}. */
export interface DecodeStreamOptions extends DecodeChunksOptions {
  /** Size of the chunks the verified state is emitted in. Default 1 MiB. */
  chunkSize?: number;
}

/** What {@link encodeChunks} and {@link decodeChunks} read: byte chunks of any size. */
export type ChunkSource = AsyncIterable<Uint8Array> | Iterable<Uint8Array>;

/** The decoded state and what the stream said about it. */
export interface DecodeResult {
  /** The state, regions concatenated in header order. */
  state: Uint8Array;
  /** The device config blob, if the stream carried one. */
  config: Uint8Array | undefined;
  summary: DecoderSummary;
}

const DEFAULT_CHUNK_SIZE = 1 << 20;

/**
 * A Transform from the state's bytes (in any chunking, regions concatenated in order) to a
 * full stream. It encodes as chunks arrive and never holds more than about one output window
 * (1 MiB) plus one partial page, so states larger than memory can be piped through it.
 */
export class EncodeStream extends Transform {
  readonly #feeder: StateFeeder;
  readonly #signal: AbortSignal | undefined;
  readonly #onAbort = (): void => {
    this.destroy(canceled("encode", this.#signal));
  };

  constructor(options: EncodeStreamOptions) {
    super();
    const { signal, ...rest } = options;
    // Misuse is reported synchronously, before any core memory is taken.
    checkSignal(signal);
    this.#feeder = new StateFeeder(rest, (chunk) => {
      // push() returning false is handled by Transform: it holds back the write callback (and
      // so the next input chunk) until the readable side has drained below its high-water mark.
      this.push(chunk);
    });
    this.#signal = signal;
  }

  /**
   * Watches the signal from here rather than from the constructor: a stream destroyed while it
   * is being constructed is destroyed before anyone could pipe it, which `pipeline` reports as
   * ERR_STREAM_UNABLE_TO_PIPE on Node 24+, Deno and Bun while the error itself goes unhandled.
   * An error passed to this callback takes the normal path on every runtime.
   */
  override _construct(callback: (error?: Error | null) => void): void {
    callback(watchSignal(this.#signal, "encode", this.#onAbort));
  }

  /** The header the stream is written with. */
  get header(): StreamHeader {
    return this.#feeder.header;
  }

  /** The encoder's counts so far (final once the stream has ended). */
  summary(): EncoderSummary {
    return this.#feeder.summary();
  }

  override _transform(chunk: unknown, _encoding: BufferEncoding, callback: TransformCallback): void {
    try {
      this.#feeder.push(chunk);
    } catch (error) {
      callback(toError(error));
      return;
    }
    callback();
  }

  override _flush(callback: TransformCallback): void {
    try {
      this.#feeder.finish();
    } catch (error) {
      callback(toError(error));
      return;
    }
    callback();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.#signal?.removeEventListener("abort", this.#onAbort);
    // Idempotent, and a no-op after a normal end: gives the core memory back on every path.
    this.#feeder.abort();
    callback(error);
  }
}

/**
 * A Transform from stream bytes (any chunking) to the decoded state. Nothing is emitted until
 * the input has ended and the whole stream verified (end record, digest, completeness); then the
 * state comes out in `chunkSize` pieces. A damaged, truncated or aborted stream destroys the
 * Transform with a MigrationError (EBADMSG, ENODATA, ECANCELED, ...) and emits nothing.
 */
export class DecodeStream extends Transform {
  readonly #decoder: StateDecoder;
  readonly #chunkSize: number;
  readonly #signal: AbortSignal | undefined;
  readonly #onAbort = (): void => {
    this.destroy(canceled("decode", this.#signal));
  };

  constructor(options: DecodeStreamOptions = {}) {
    super();
    const { signal, chunkSize = DEFAULT_CHUNK_SIZE, ...decoderOptions } = options;
    checkSignal(signal);
    if (!Number.isSafeInteger(chunkSize) || chunkSize < 1) {
      throw new MigrationError("EINVAL", `chunkSize must be a positive integer, got ${String(chunkSize)}`);
    }
    this.#chunkSize = chunkSize;
    this.#decoder = createDecoder(decoderOptions);
    this.#signal = signal;
  }

  /** As {@link EncodeStream}'s: an already-aborted signal fails the stream once it can be piped. */
  override _construct(callback: (error?: Error | null) => void): void {
    callback(watchSignal(this.#signal, "decode", this.#onAbort));
  }

  /** The stream header, once read and verified. */
  get header(): StreamHeader | undefined {
    return this.#decoder.header;
  }

  /** The device config blob, if the stream carried one (trust it only after 'end'). */
  get config(): Uint8Array | undefined {
    return this.#decoder.config;
  }

  /** The decoder's counts so far. */
  summary(): DecoderSummary {
    return this.#decoder.summary();
  }

  override _transform(chunk: unknown, _encoding: BufferEncoding, callback: TransformCallback): void {
    try {
      this.#decoder.push(asChunk(chunk));
    } catch (error) {
      callback(toError(error));
      return;
    }
    callback();
  }

  override _flush(callback: TransformCallback): void {
    let state: Uint8Array;
    try {
      this.#decoder.end();
      state = this.#decoder.result();
    } catch (error) {
      callback(toError(error));
      return;
    }
    // The state is already one array in memory: the pieces are views of it, so queueing them
    // all costs no memory, and the consumer still reads them at its own pace.
    for (let at = 0; at < state.length; at += this.#chunkSize) {
      this.push(state.subarray(at, Math.min(state.length, at + this.#chunkSize)));
    }
    callback();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.#signal?.removeEventListener("abort", this.#onAbort);
    // No-op once the stream verified (or failed, which already released the decoder).
    this.#decoder.abort();
    callback(error);
  }
}

/**
 * A Transform that encodes a state's bytes into a full stream: see {@link EncodeStream}.
 * The state's size must be known up front (`size` or `regions`), because the header carries it.
 */
export function createEncodeStream(options: EncodeStreamOptions): EncodeStream {
  return new EncodeStream(options);
}

/** A Transform that decodes a stream into the state once verified: see {@link DecodeStream}. */
export function createDecodeStream(options: DecodeStreamOptions = {}): DecodeStream {
  return new DecodeStream(options);
}

/**
 * Encodes a state given as chunks (any sizes, sync or async) into stream chunks. Lazy and
 * pull-driven: the source is read only as fast as the result is consumed, and no core memory is
 * taken before the first `next()`. Breaking out of the loop, or aborting `signal`, closes the
 * source and frees the encoder.
 */
export async function* encodeChunks(source: ChunkSource, options: EncodeStreamOptions): AsyncGenerator<Uint8Array, void, undefined> {
  const { signal, ...rest } = options;
  checkSignal(signal);
  throwIfAborted("encode", signal);
  const queue: Uint8Array[] = [];
  const feeder = new StateFeeder(rest, (chunk) => queue.push(chunk));
  try {
    for await (const chunk of readChunks(source, "encode", signal)) {
      feeder.push(chunk);
      // One input chunk may complete several output windows; hand them out one by one.
      while (queue.length > 0) {
        yield queue.shift()!;
        throwIfAborted("encode", signal);
      }
    }
    feeder.finish();
    while (queue.length > 0) yield queue.shift()!;
  } finally {
    feeder.abort();
  }
}

/**
 * Decodes a stream given as chunks (any sizes, sync or async) and resolves to the state once the
 * stream verified. Rejects with a MigrationError (EBADMSG, ENODATA, ECANCELED, ...) otherwise.
 */
export async function decodeChunks(source: ChunkSource, options: DecodeChunksOptions = {}): Promise<Uint8Array> {
  return (await decodeChunksWithSummary(source, options)).state;
}

/** {@link decodeChunks}, also giving the config blob and the decoder's counts. */
export async function decodeChunksWithSummary(source: ChunkSource, options: DecodeChunksOptions = {}): Promise<DecodeResult> {
  const { signal, ...decoderOptions } = options;
  checkSignal(signal);
  throwIfAborted("decode", signal);
  const decoder = createDecoder(decoderOptions);
  try {
    for await (const chunk of readChunks(source, "decode", signal)) decoder.push(chunk);
    decoder.end();
    return { state: decoder.result(), config: decoder.config, summary: decoder.summary() };
  } finally {
    // Frees core memory when the source failed or was aborted; a no-op after success.
    decoder.abort();
  }
}

/**
 * The encoder behind both encode adapters: feeds sequential state bytes, counts them (so that a
 * short state is reported before the end record is written) and writes the config last.
 */
class StateFeeder {
  readonly #encoder: StreamEncoder;
  readonly #config: Uint8Array | undefined;
  readonly #total: number;
  #received = 0;

  constructor(options: Omit<EncodeStreamOptions, "signal">, ondata: (chunk: Uint8Array) => void) {
    if (options === null || typeof options !== "object") throw new MigrationError("EINVAL", "encode options are required");
    const { config, ...encoderOptions } = options;
    if ("baseDigest" in encoderOptions) {
      // Sequential bytes cannot be compared with a base page by page here; incremental streams
      // need writePages with a shadow (or encodeSnapshot with `base`).
      throw new MigrationError("EINVAL", "incremental streams are not supported by the stream adapters; use encodeSnapshot with a base");
    }
    if (encoderOptions.regions === undefined && encoderOptions.size === undefined) {
      throw new MigrationError("EINVAL", "the state's size must be known up front: give `size` or `regions`");
    }
    if (encoderOptions.regions !== undefined && encoderOptions.size !== undefined) {
      const sum = encoderOptions.regions.reduce((n, r) => n + r.size, 0);
      if (sum !== encoderOptions.size) throw new MigrationError("EINVAL", `regions add up to ${sum} bytes, size is ${encoderOptions.size}`);
    }
    if (config !== undefined && !(config instanceof Uint8Array)) throw new MigrationError("EINVAL", "config must be a Uint8Array");
    // The encoder copies every output chunk out of core memory before ondata sees it.
    const encoder = createEncoder({ ...encoderOptions, ondata: (chunk) => ondata(chunk) });
    if (config && config.length > encoder.header.maxRecordPayload) {
      // Checked now rather than after the whole state went through.
      encoder.abort();
      throw new MigrationError("EINVAL", `config blob of ${config.length} bytes exceeds the record payload limit ${encoder.header.maxRecordPayload}`);
    }
    this.#encoder = encoder;
    this.#config = config?.slice();
    this.#total = encoder.header.totalSize;
  }

  get header(): StreamHeader {
    return this.#encoder.header;
  }

  summary(): EncoderSummary {
    return this.#encoder.summary();
  }

  push(chunk: unknown): void {
    const bytes = asChunk(chunk);
    if (this.#received + bytes.length > this.#total) {
      throw new MigrationError("EINVAL", `the state has more than its declared ${this.#total} bytes`);
    }
    this.#encoder.push(bytes);
    this.#received += bytes.length;
  }

  finish(): void {
    if (this.#received !== this.#total) {
      throw new MigrationError("EINVAL", `the state ended after ${this.#received} of its declared ${this.#total} bytes`);
    }
    if (this.#config) this.#encoder.writeConfig(this.#config);
    this.#encoder.end();
  }

  abort(): void {
    this.#encoder.abort();
  }
}

/**
 * Iterates `source`, checking each chunk's type and `signal`. A pending `next()` of an async
 * source is raced against the signal, so an abort is seen even while the source is stalled.
 */
async function* readChunks(source: ChunkSource, what: string, signal: AbortSignal | undefined): AsyncGenerator<Uint8Array, void, undefined> {
  if (source === null || typeof source !== "object" || !(Symbol.asyncIterator in source || Symbol.iterator in source)) {
    throw new MigrationError("EINVAL", "source must be an iterable or async iterable of Uint8Array chunks");
  }
  if (!(Symbol.asyncIterator in source)) {
    for (const chunk of source) {
      throwIfAborted(what, signal);
      yield asChunk(chunk);
    }
    throwIfAborted(what, signal);
    return;
  }
  const iterator = source[Symbol.asyncIterator]();
  let done = false;
  let stalled = false;
  try {
    for (;;) {
      const next = iterator.next();
      stalled = true;
      const step = signal ? await raceAbort(next, what, signal) : await next;
      stalled = false;
      if (step.done) {
        done = true;
        return;
      }
      yield asChunk(step.value);
      throwIfAborted(what, signal);
    }
  } finally {
    if (!done && iterator.return) {
      // Close the source. If it is stuck in next() (the abort won the race), its return() would
      // queue behind that call, so start it without waiting for it.
      const closing = iterator.return();
      if (stalled) closing.catch(() => undefined);
      else await closing;
    }
  }
}

function raceAbort<T>(promise: Promise<T>, what: string, signal: AbortSignal): Promise<T> {
  if (signal.aborted) {
    promise.catch(() => undefined);
    return Promise.reject(canceled(what, signal));
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(canceled(what, signal));
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener("abort", onAbort);
        resolve(value);
      },
      (error: unknown) => {
        signal.removeEventListener("abort", onAbort);
        reject(error);
      },
    );
  });
}

function asChunk(chunk: unknown): Uint8Array {
  if (!(chunk instanceof Uint8Array)) throw new MigrationError("EINVAL", "chunks must be Uint8Array (or Buffer)");
  return chunk;
}

function checkSignal(signal: AbortSignal | undefined): void {
  if (signal !== undefined && !(signal instanceof AbortSignal)) throw new MigrationError("EINVAL", "signal must be an AbortSignal");
}

function canceled(what: string, signal: AbortSignal | undefined): MigrationError {
  return new MigrationError("ECANCELED", `${what} aborted`, { cause: signal?.reason });
}

/** The ECANCELED error for a signal aborted already, or null after listening for a later abort. */
function watchSignal(signal: AbortSignal | undefined, what: string, onAbort: () => void): MigrationError | null {
  if (!signal) return null;
  if (signal.aborted) return canceled(what, signal);
  signal.addEventListener("abort", onAbort, { once: true });
  return null;
}

function throwIfAborted(what: string, signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw canceled(what, signal);
}

/** Stream callbacks need Error instances; codec errors already are MigrationErrors. */
function toError(error: unknown): Error {
  return error instanceof Error ? error : new MigrationError("EIO", String(error), { cause: error });
}
