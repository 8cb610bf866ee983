// One-shot and streaming entry points for whole states held in memory.
import { MigrationError } from "../core/errors.js";
import { xxh3 } from "../core/xxh3.js";
import type { RegionSpec } from "../format/header.js";
import { stableView } from "./contexts.js";
import { type DecoderOptions, StreamDecoder } from "./decoder.js";
import { type EncoderOptions, type EncoderSummary, StreamEncoder } from "./encoder.js";
import { MemoryTarget } from "./memory-target.js";

export interface SnapshotEncodeOptions extends Omit<EncoderOptions, "ondata" | "baseDigest" | "size"> {
  /** The previous state: the stream then carries only pages that differ, delta-coded when smaller. */
  base?: Uint8Array;
  /** Device config blob to carry. */
  config?: Uint8Array;
}

/** Encodes a whole state into one stream (incremental against `options.base` when given). */
export function encodeSnapshot(state: Uint8Array, options: SnapshotEncodeOptions = {}): Uint8Array {
  return encodeSnapshotWithSummary(state, options).stream;
}

/** {@link encodeSnapshot}, also returning the encoder's counts. */
export function encodeSnapshotWithSummary(state: Uint8Array, options: SnapshotEncodeOptions = {}): { stream: Uint8Array; summary: EncoderSummary } {
  if (!(state instanceof Uint8Array)) throw new MigrationError("EINVAL", "state must be a Uint8Array");
  const regions = layoutOf(state.length, options.regions);
  const { base, config } = options;
  if (base && base.length !== state.length) {
    throw new MigrationError("EINVAL", `base is ${base.length} bytes, state is ${state.length}`);
  }
  const output = new GrowableOutput(estimateSize(state.length, options.pageSize ?? 4096));
  // The encoder allocates core memory, which may grow it and detach views of it: a state or base
  // that lives there (a CoreBuffer's bytes) is looked up again afterwards.
  const currentState = stableView(state);
  const currentBase = base && stableView(base);
  const encoder = new StreamEncoder({ ...options, regions, ...(base ? { baseDigest: xxh3(base) } : {}) }, (view) => output.append(view));
  try {
    let at = 0;
    regions.forEach((region, i) => {
      const data = currentState().subarray(at, at + region.size);
      if (currentBase) encoder.writePages(i, 0, data, { shadow: currentBase().subarray(at, at + region.size) });
      else encoder.writePages(i, 0, data);
      at += region.size;
    });
    if (config) encoder.writeConfig(config);
    encoder.end();
  } catch (error) {
    encoder.abort();
    throw error;
  }
  return { stream: output.result(), summary: encoder.summary() };
}

/** A decoder that stages the state in memory; `result()` gives it once the stream verified. */
export class StateDecoder extends StreamDecoder {
  readonly #target: MemoryTarget;
  readonly #regionOf: (i: number) => Uint8Array | undefined;

  constructor(options: DecoderOptions = {}) {
    // Staging regions are allocated in core memory before the base is copied into them, so a
    // base that lives there is looked up again rather than read through a detached view.
    const base = options.base && stableView(options.base);
    let offsets: number[] = [];
    const regionOf = (i: number): Uint8Array | undefined => (base ? base().subarray(offsets[i]!, offsets[i + 1]!) : undefined);
    const target = new MemoryTarget(regionOf);
    super(
      {
        open(header) {
          offsets = [0];
          for (const r of header.regions) offsets.push(offsets[offsets.length - 1]! + r.size);
          return target.open(header);
        },
        commit: () => target.commit(),
        abort: () => target.abort(),
      },
      options,
    );
    this.#target = target;
    this.#regionOf = regionOf;
  }

  /** The decoded state (regions concatenated in order). Only after the stream ended and verified. */
  result(): Uint8Array {
    return this.#target.result(this.#regionOf);
  }
}

/** A push-style decoder into memory: push(chunk, final), then result(). */
export function createDecoder(options: DecoderOptions = {}): StateDecoder {
  return new StateDecoder(options);
}

/** Decodes a whole stream; incremental streams need `options.base`. */
export function decodeSnapshot(stream: Uint8Array, options: DecoderOptions = {}): Uint8Array {
  if (!(stream instanceof Uint8Array)) throw new MigrationError("EINVAL", "stream must be a Uint8Array");
  const decoder = new StateDecoder(options);
  decoder.push(stream, true);
  return decoder.result();
}

function layoutOf(size: number, regions: readonly RegionSpec[] | undefined): readonly RegionSpec[] {
  if (!regions) return [{ name: "state", size }];
  const total = regions.reduce((n, r) => n + r.size, 0);
  if (total !== size) throw new MigrationError("EINVAL", `regions add up to ${total} bytes, state is ${size}`);
  return regions;
}

/** Upper bound of a stream for `size` bytes: every page its own record. */
function estimateSize(size: number, pageSize: number): number {
  return 4096 + size + Math.ceil(size / pageSize) * 32;
}

/** Collects output views with one copy each, growing by doubling. */
class GrowableOutput {
  #buffer: Uint8Array;
  #length = 0;

  constructor(capacity: number) {
    this.#buffer = new Uint8Array(Math.min(capacity, 1 << 30));
  }

  append(view: Uint8Array): void {
    if (this.#length + view.length > this.#buffer.length) {
      const grown = new Uint8Array(Math.max(this.#buffer.length * 2, this.#length + view.length));
      grown.set(this.#buffer.subarray(0, this.#length));
      this.#buffer = grown;
    }
    this.#buffer.set(view, this.#length);
    this.#length += view.length;
  }

  result(): Uint8Array {
    // Trim only when most of the buffer is unused (zero-heavy states): a copy of a small result.
    return this.#length < this.#buffer.length / 2 ? this.#buffer.slice(0, this.#length) : this.#buffer.subarray(0, this.#length);
  }
}
