// A decode target that stages regions in core memory: the kernel applies records straight
// into the staging copies, and the caller's state is only touched after the stream verified.
import { allocating, type CoreBuffer } from "../core/buffer.js";
import { MigrationError } from "../core/errors.js";
import type { StreamHeader } from "../format/header.js";
import type { DecodeTarget } from "./decoder.js";

export class MemoryTarget implements DecodeTarget {
  readonly #initial: ((region: number) => Uint8Array | undefined) | undefined;
  #staging: CoreBuffer[] = [];
  #committed = false;

  /** `initial(i)` gives region i's starting content (the base or the device's current state). */
  constructor(initial?: (region: number) => Uint8Array | undefined) {
    this.#initial = initial;
  }

  open(header: StreamHeader): number[] {
    this.#staging = allocating((alloc) =>
      header.regions.map((region, i) => {
        const buffer = alloc(region.size);
        const start = this.#initial?.(i);
        // Without a starting content nothing is cleared: a full stream must deliver every page
        // before it can commit, so no stale byte of reused memory can reach a result.
        if (start) buffer.bytes.set(start);
        return buffer;
      }),
    );
    // Allocation may have grown memory: pointers are stable, views are not.
    return this.#staging.map((b) => b.ptr);
  }

  commit(): void {
    this.#committed = true;
  }

  abort(): void {
    for (const buffer of this.#staging) buffer.free();
    this.#staging = [];
  }

  /** The committed regions, handed over to the caller (who frees them). */
  take(): CoreBuffer[] {
    if (!this.#committed) throw new MigrationError("EINVAL", "the stream has not been decoded completely");
    const staging = this.#staging;
    this.#staging = [];
    return staging;
  }

  /** The committed state as one fresh array (regions in order); frees the staging copies. */
  result(): Uint8Array {
    const regions = this.take();
    const total = regions.reduce((n, r) => n + r.length, 0);
    let state: Uint8Array;
    if (regions.length === 1) state = regions[0]!.bytes.slice();
    else {
      state = new Uint8Array(total);
      let at = 0;
      for (const r of regions) {
        state.set(r.bytes, at);
        at += r.length;
      }
    }
    for (const r of regions) r.free();
    return state;
  }
}
