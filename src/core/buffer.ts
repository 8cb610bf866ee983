import { MigrationError } from "./errors.js";
import { core, type Core } from "./instance.js";

/**
 * A block of bytes inside the Wasm core's memory. Kernels read and write it in place, with no
 * copy across the JS/Wasm boundary: put device state here to get the full speed of the core.
 *
 * `bytes` is a fresh view whenever memory has grown (growth detaches older views), so take it
 * again after anything that may allocate rather than keeping it.
 */
export class CoreBuffer {
  readonly length: number;
  readonly #core: Core;
  #ptr: number;
  #view: Uint8Array | undefined;

  /**
   * True if the bytes started as zeros: asked for (`zeroed`), or the block happened to be fresh
   * memory, which is zero without being touched.
   */
  readonly startedZeroed: boolean;

  /** `zeroed`: the bytes start as zeros (otherwise unspecified, for buffers about to be filled). */
  constructor(length: number, zeroed = false) {
    if (!Number.isSafeInteger(length) || length < 0) {
      throw new MigrationError("EINVAL", `invalid buffer length ${length}`);
    }
    this.#core = core();
    this.length = length;
    if (zeroed) {
      this.#ptr = this.#core.allocZeroed(length);
      this.startedZeroed = true;
    } else {
      const { ptr, zeroed: fresh } = this.#core.allocReporting(length);
      this.#ptr = ptr;
      this.startedZeroed = fresh;
    }
  }

  /** Byte offset of the block in core memory. Throws once freed or if the core was replaced. */
  get ptr(): number {
    this.#check();
    return this.#ptr;
  }

  /** The block's bytes, a view into core memory. */
  get bytes(): Uint8Array {
    this.#check();
    const memory = this.#core.memory.buffer;
    if (this.#view === undefined || this.#view.buffer !== memory) {
      this.#view = new Uint8Array(memory, this.#ptr, this.length);
    }
    return this.#view;
  }

  /** True while the block can be used. */
  get alive(): boolean {
    return this.#ptr >= 0 && core() === this.#core;
  }

  /** Gives the block back. Using it afterwards throws; freeing twice is harmless. */
  free(): void {
    if (this.#ptr < 0) return;
    if (core() === this.#core) this.#core.free(this.#ptr);
    this.#ptr = -1;
    this.#view = undefined;
  }

  #check(): void {
    if (this.#ptr < 0) throw new MigrationError("EINVAL", "buffer used after free()");
    if (core() !== this.#core) {
      throw new MigrationError("EFAULT", "buffer belongs to a Wasm core instance that was replaced after a trap");
    }
  }
}

/**
 * Runs `build` with an `alloc` that remembers what it made; if `build` throws (memory exhausted
 * half-way, say), everything allocated so far is freed before the error goes on.
 */
export function allocating<T>(build: (alloc: (length: number, zeroed?: boolean) => CoreBuffer) => T): T {
  const made: CoreBuffer[] = [];
  try {
    return build((length, zeroed = false) => {
      const buffer = new CoreBuffer(length, zeroed);
      made.push(buffer);
      return buffer;
    });
  } catch (error) {
    for (const buffer of made) buffer.free();
    throw error;
  }
}

/** Allocates `length` zeroed bytes in core memory. */
export function allocate(length: number): CoreBuffer {
  return new CoreBuffer(length, true);
}
