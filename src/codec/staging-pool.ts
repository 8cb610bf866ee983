// Staging blocks kept between migrations. Resuming into a device swaps the staged block in and
// the device's old block out; the old block comes back here and stages the next migration of a
// region of that size, instead of fresh memory, whose first touch is slow (page faults) on
// microVMs and which would grow the process each time.
import { CoreBuffer } from "../core/buffer.js";
import { core, type Core } from "../core/instance.js";

/** At most this many blocks are kept; the oldest goes back to the allocator first. */
const MAX_BLOCKS = 8;

export class StagingPool {
  readonly #blocks: CoreBuffer[] = [];

  /**
   * A block of exactly `length` bytes: a kept one (its content unspecified), else a new one,
   * which is zero when it came from memory never handed out before (`zeroed`).
   */
  take(length: number): { buffer: CoreBuffer; zeroed: boolean; pooled: boolean } {
    for (let i = this.#blocks.length - 1; i >= 0; i--) {
      const block = this.#blocks[i]!;
      if (!block.alive) {
        this.#blocks.splice(i, 1);
        continue;
      }
      if (block.length === length) {
        this.#blocks.splice(i, 1);
        return { buffer: block, zeroed: false, pooled: true };
      }
    }
    this.#watch();
    // Should memory run out, the core calls back and the kept blocks are freed first.
    const buffer = new CoreBuffer(length);
    return { buffer, zeroed: buffer.startedZeroed, pooled: false };
  }

  /** Keeps `buffer` for a later take() (the caller no longer uses it). */
  give(buffer: CoreBuffer): void {
    if (!buffer.alive || buffer.length === 0) return;
    this.#watch();
    this.#blocks.push(buffer);
    while (this.#blocks.length > MAX_BLOCKS) this.#blocks.shift()!.free();
  }

  /**
   * Allocates and touches a block for each size, kept for the next resumes of regions that size:
   * the first touch of fresh memory (page faults, slow on microVMs) then happens now, before a
   * migration, instead of while its stream is being decoded. What a target VMM does with guest
   * memory, done for device-state staging. At most the pool's capacity is kept.
   */
  reserve(sizes: readonly number[]): void {
    for (const size of sizes) {
      if (size <= 0) continue;
      this.#watch();
      const buffer = new CoreBuffer(size);
      buffer.bytes.fill(0);
      this.give(buffer);
    }
  }

  /** Returns every kept block to the allocator; true if there was any. */
  clear(): boolean {
    const blocks = this.#blocks.splice(0);
    for (const block of blocks) block.free();
    return blocks.length > 0;
  }

  /** Cores (one at a time; a new one after a trap) this pool asked to call back on exhaustion. */
  readonly #watched = new WeakSet<Core>();

  #watch(): void {
    const c = core();
    if (this.#watched.has(c)) return;
    this.#watched.add(c);
    c.onReclaim(() => this.clear());
  }

  /** Bytes kept (for tests and diagnostics). */
  get keptBytes(): number {
    return this.#blocks.reduce((n, b) => n + (b.alive ? b.length : 0), 0);
  }
}

/** The pool every memory target and device shares (one per process, like the core). */
export const stagingPool = new StagingPool();

/**
 * Prepares resuming regions of these sizes (e.g. `device.model.layout.map((r) => r.size)`) by
 * allocating and touching their staging now; see {@link StagingPool.reserve}.
 */
export function reserveStaging(sizes: readonly number[]): void {
  stagingPool.reserve(sizes);
}
