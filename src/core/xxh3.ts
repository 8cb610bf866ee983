import { MigrationError } from "./errors.js";
import { core, guarded, type Core } from "./instance.js";

/**
 * Inputs outside core memory are copied in through scratch in windows of this size, so hashing
 * a huge JS buffer never needs a Wasm memory of the same size. At 1 MiB the per-call cost
 * (BigInt seed/result, ~20 ns) is negligible, and the window is still cache-resident when the
 * kernel reads back what was just copied in.
 */
const WINDOW = 1 << 20;
const U64_LIMIT = 1n << 64n;

function checkData(data: unknown): asserts data is Uint8Array {
  if (!(data instanceof Uint8Array)) throw new MigrationError("EINVAL", "data must be a Uint8Array");
  // A view taken before core memory grew is detached and reads as empty; hashing it would
  // silently give the empty-input hash. Only empty views can be detached, so this stays cheap.
  if (data.byteLength === 0 && isDetached(data.buffer)) {
    throw new MigrationError("EINVAL", "data is a view of a detached buffer (take views of core memory again after it grows)");
  }
}

function isDetached(buffer: ArrayBufferLike): boolean {
  if (buffer.byteLength !== 0) return false;
  try {
    // Node 20 has no ArrayBuffer.prototype.detached; constructing a view is the portable probe.
    new Uint8Array(buffer);
    return false;
  } catch {
    return true;
  }
}

function checkSeed(seed: unknown): asserts seed is bigint {
  if (typeof seed !== "bigint" || seed < 0n || seed >= U64_LIMIT) {
    throw new MigrationError("EINVAL", "seed must be a bigint in [0, 2^64)");
  }
}

// c.owns() reads WebAssembly.Memory#buffer, a host call of about 30 ns: a tenth of the cost of
// hashing a 4 KiB page in place. Growth detaches the previous buffer, so a remembered buffer that
// is still attached is still the current one and the host call can be skipped.
let knownCore: Core | undefined;
let knownBuffer: ArrayBufferLike | undefined;

/** True if `data` lives in the memory of `c` (so the kernel can read it in place). */
function inCore(c: Core, data: Uint8Array): boolean {
  const buffer = data.buffer;
  if (buffer === knownBuffer && c === knownCore && buffer.byteLength !== 0) return true;
  if (!c.owns(data)) return false;
  knownCore = c;
  knownBuffer = buffer;
  return true;
}

/** Wasm returns i64 as a signed BigInt; hashes are unsigned. */
function unsigned(value: bigint): bigint {
  return BigInt.asUintN(64, value);
}

function alignUp(value: number, align: number): number {
  return Math.ceil(value / align) * align;
}

/**
 * Feeds `data` (which is not in core memory) into the streaming state at `state`, one window at a
 * time through `window`. Nothing allocates inside the loop, so the memory view stays valid.
 */
function feedWindows(c: Core, state: number, window: number, data: Uint8Array): void {
  const u8 = c.u8;
  const update = c.exports.xxh3_update;
  for (let offset = 0; offset < data.length; offset += WINDOW) {
    const chunk = data.subarray(offset, Math.min(offset + WINDOW, data.length));
    u8.set(chunk, window);
    update(state, window, chunk.length);
  }
}

/**
 * XXH3-64 (`XXH3_64bits_withSeed`) of `data`, bit-identical to the reference xxHash.
 *
 * Data that already lives in core memory (a `CoreBuffer`'s bytes, or a view of them) is hashed
 * in place at full kernel speed; anything else is copied in first, which costs roughly as much
 * as the hash itself, so keep hot inputs in core memory.
 *
 * @param data bytes to hash
 * @param seed a bigint in [0, 2^64); 0 gives the standard unseeded XXH3-64
 * @returns the hash as a bigint in [0, 2^64)
 * @throws MigrationError `EINVAL` for a non-Uint8Array or an out-of-range seed, `ENOMEM` if core
 *   memory cannot grow for the scratch window, `EFAULT` if the core trapped
 */
export function xxh3(data: Uint8Array, seed: bigint = 0n): bigint {
  checkData(data);
  checkSeed(seed);
  return guarded((c) => {
    const e = c.exports;
    if (inCore(c, data)) return unsigned(e.xxh3_64(data.byteOffset, data.length, seed));
    if (data.length <= WINDOW) {
      const ptr = c.scratch(data.length);
      c.u8.set(data, ptr);
      return unsigned(e.xxh3_64(ptr, data.length, seed));
    }
    // Larger than one window: stream it. State and window share one scratch block.
    const stateBytes = alignUp(e.xxh3_state_size(), 64);
    const state = c.scratch(stateBytes + WINDOW);
    e.xxh3_reset(state, seed);
    feedWindows(c, state, state + stateBytes, data);
    return unsigned(e.xxh3_digest(state));
  });
}

/** An incremental XXH3-64 whose state lives in core memory. */
export interface Xxh3Hasher {
  /**
   * Adds `data` to the hash. Returns the hasher for chaining.
   * @throws MigrationError `EINVAL` for a non-Uint8Array or after free(), `EFAULT` if the core
   *   instance holding the state was replaced after a trap
   */
  update(data: Uint8Array): this;
  /**
   * The XXH3-64 of everything added so far, as a bigint in [0, 2^64). The hasher stays usable:
   * more updates may follow, and a later digest covers them too.
   * @throws MigrationError `EINVAL` after free(), `EFAULT` if the core instance was replaced
   */
  digest(): bigint;
  /** Releases the state in core memory. Using the hasher afterwards throws; freeing twice is harmless. */
  free(): void;
}

class CoreXxh3 implements Xxh3Hasher {
  readonly #core: Core;
  #state: number;

  constructor(seed: bigint) {
    this.#core = core();
    const e = this.#core.exports;
    this.#state = this.#core.alloc(e.xxh3_state_size());
    guarded(() => e.xxh3_reset(this.#state, seed));
  }

  update(data: Uint8Array): this {
    checkData(data);
    const c = this.#live();
    guarded(() => {
      const e = c.exports;
      if (inCore(c, data)) {
        // In place: the kernel streams straight over caller memory, whatever the length.
        e.xxh3_update(this.#state, data.byteOffset, data.length);
      } else if (data.length > 0) {
        // scratch() may grow memory; #live() was checked before, and the state pointer is stable.
        const window = c.scratch(Math.min(data.length, WINDOW));
        feedWindows(c, this.#state, window, data);
      }
    });
    return this;
  }

  digest(): bigint {
    const c = this.#live();
    return guarded(() => unsigned(c.exports.xxh3_digest(this.#state)));
  }

  free(): void {
    if (this.#state < 0) return;
    // A replaced core took its blocks with it; freeing into the new one would corrupt it.
    if (core() === this.#core) this.#core.free(this.#state);
    this.#state = -1;
  }

  #live(): Core {
    if (this.#state < 0) throw new MigrationError("EINVAL", "XXH3 hasher used after free()");
    if (core() !== this.#core) {
      throw new MigrationError("EFAULT", "XXH3 hasher belongs to a Wasm core instance that was replaced after a trap");
    }
    return this.#core;
  }
}

/**
 * Starts an incremental XXH3-64. Splitting the input into any sequence of update() calls gives
 * the same digest as xxh3() on the whole. Call free() when done: the state (under 1 KiB) lives
 * in core memory, which is not garbage collected.
 *
 * @param seed a bigint in [0, 2^64); 0 gives the standard unseeded XXH3-64
 * @throws MigrationError `EINVAL` for an out-of-range seed, `ENOMEM` if core memory cannot grow
 */
export function createXxh3(seed: bigint = 0n): Xxh3Hasher {
  checkSeed(seed);
  return new CoreXxh3(seed);
}
