// The client's DMA windows (VFIO_USER_DMA_MAP / _UNMAP): which guest addresses the device may
// reach, and how. A file descriptor the client attaches to a map cannot reach this process
// (Node reads UNIX sockets without ancillary data, so the kernel discards it): every window is
// reached in-band, through DMA_READ / DMA_WRITE messages to the client.
import { MigrationError } from "../../core/errors.js";
import { VfioUserError } from "./protocol.js";

export const DMA_FLAG_READ = 1;
export const DMA_FLAG_WRITE = 2;
/** libvfio-user's flag for a map that came with a file descriptor (dropped here, see above). */
export const DMA_FLAG_MAPPABLE = 4;
/** DMA_UNMAP flags: a dirty bitmap in the reply (not offered), and "every window". */
export const DMA_UNMAP_FLAG_GET_DIRTY_BITMAP = 1;
export const DMA_UNMAP_FLAG_ALL = 2;

export interface DmaWindow {
  readonly address: number;
  readonly size: number;
  readonly readable: boolean;
  readonly writable: boolean;
}

/** An unsigned 64-bit field as a safe integer (EINVAL past 2^53: addresses are tracked as numbers). */
export function u64(view: DataView, at: number, what: string): number {
  const value = view.getBigUint64(at, true);
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw new VfioUserError("EINVAL", `${what} ${value} is beyond 2^53`);
  return Number(value);
}

export class DmaWindows {
  readonly #max: number;
  /** Sorted by address, never overlapping. */
  #windows: DmaWindow[] = [];

  constructor(maxWindows: number) {
    this.#max = maxWindows;
  }

  get windows(): readonly DmaWindow[] {
    return this.#windows;
  }

  map(address: number, size: number, flags: number): void {
    if (size <= 0 || !Number.isSafeInteger(address + size)) throw new VfioUserError("EINVAL", `DMA window [${address}, +${size}) is empty or overflows`);
    if ((flags & ~(DMA_FLAG_READ | DMA_FLAG_WRITE | DMA_FLAG_MAPPABLE)) !== 0) throw new VfioUserError("EINVAL", `unknown DMA map flags ${flags}`);
    const end = address + size;
    if (this.#windows.some((w) => w.address < end && address < w.address + w.size)) {
      throw new VfioUserError("EEXIST", `DMA window [${address}, ${end}) overlaps an existing one`);
    }
    if (this.#windows.length >= this.#max) throw new VfioUserError("ENOSPC", `at most ${this.#max} DMA windows`);
    this.#windows.push({ address, size, readable: (flags & DMA_FLAG_READ) !== 0, writable: (flags & DMA_FLAG_WRITE) !== 0 });
    this.#windows.sort((a, b) => a.address - b.address);
  }

  /** Removes the window that is exactly [address, address + size) (ENOENT when none is). */
  unmap(address: number, size: number): void {
    const at = this.#windows.findIndex((w) => w.address === address && w.size === size);
    if (at < 0) throw new VfioUserError("ENOENT", `no DMA window is exactly [${address}, +${size})`);
    this.#windows.splice(at, 1);
  }

  clear(): void {
    this.#windows = [];
  }

  /**
   * [address, address + length) cut at window boundaries (a client answers each DMA message
   * from one of its windows); EINVAL unless all of it lies in windows that allow `access`.
   */
  segments(address: number, length: number, access: "read" | "write"): { address: number; length: number }[] {
    if (!Number.isSafeInteger(address) || !Number.isSafeInteger(length) || address < 0 || length < 0 || !Number.isSafeInteger(address + length)) {
      throw new MigrationError("EINVAL", "DMA needs a non-negative safe-integer address and length");
    }
    const out: { address: number; length: number }[] = [];
    let at = address;
    const end = address + length;
    // Adjacent windows may together cover the range.
    for (const w of this.#windows) {
      if (at >= end) break;
      if (w.address + w.size <= at) continue;
      if (w.address > at) break;
      if (access === "read" ? !w.readable : !w.writable) {
        throw new MigrationError("EINVAL", `DMA ${access} at ${at}: the client's window there is not ${access === "read" ? "readable" : "writable"}`);
      }
      const stop = Math.min(end, w.address + w.size);
      out.push({ address: at, length: stop - at });
      at = stop;
    }
    if (at < end) throw new MigrationError("EINVAL", `DMA ${access} of [${address}, ${end}): ${at} is not in a window the client mapped`);
    return out;
  }
}
