// The demo's synthetic device and the workload that keeps dirtying it while it migrates.
import { createCipheriv, createHash } from "node:crypto";
import { MigrationError } from "../core/errors.js";
import type { DirtyTracking } from "../device/device-model.js";
import type { RegionSpec } from "../format/header.js";
import { MigrationDevice } from "../migration/v2/migration-device.js";

/** A deterministic 32-bit generator (mulberry32): the same seed gives the same demo. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}

/** Incompressible bytes at memcpy-like speed: an AES-CTR keystream keyed by the seed. */
function keystream(seed: number, label: string): (length: number) => Buffer {
  const key = createHash("sha256").update(`migstream-demo:${seed}:${label}`).digest();
  const cipher = createCipheriv("aes-128-ctr", key.subarray(0, 16), key.subarray(16, 32));
  let zeros = Buffer.alloc(0);
  return (length) => {
    if (zeros.length < length) zeros = Buffer.alloc(length);
    return cipher.update(zeros.subarray(0, length));
  };
}

const BLOCK = 64 * 1024;

/**
 * Incompressible words written in place (xorshift128): no intermediate buffer, so each byte of
 * the device is touched once. Seeded from the demo's seed, so the same seed gives the same state.
 */
function noiseFill(seed: number): (words: Uint32Array, from: number, count: number) => void {
  const init = prng(seed ^ 0x9e3779b9);
  let x = init() | 1;
  let y = init();
  let z = init();
  let w = init();
  return (words, from, count) => {
    for (let i = from, end = from + count; i < end; i++) {
      const t = x ^ (x << 11);
      x = y;
      y = z;
      z = w;
      w = (w ^ (w >>> 19) ^ t ^ (t >>> 8)) >>> 0;
      words[i] = w;
    }
  };
}

export interface SyntheticOptions {
  size: number;
  pageSize: number;
  tracking: DirtyTracking;
  seed: number;
  deviceId: string;
}

/** The synthetic device's layout: a small register file, and the rest as device memory. */
function syntheticLayout(size: number): RegionSpec[] {
  const regs = Math.min(BLOCK, Math.floor(size / 16));
  return regs > 0 && size - regs > 0
    ? [
        { name: "regs", size: regs },
        { name: "memory", size: size - regs },
      ]
    : [{ name: "memory", size }];
}

/**
 * A device whose state looks like a real one's: in 64 KiB blocks, about 35% zero (untouched
 * memory), 20% repetitive (tables of similar descriptors), 15% sparse (mostly zero with a few
 * words set, like page tables) and 30% random (buffers, compressed data).
 */
export function createSyntheticDevice(options: SyntheticOptions): MigrationDevice {
  if (!Number.isSafeInteger(options.size) || options.size < 1) throw new MigrationError("EINVAL", `invalid device size ${options.size}`);
  const device = new MigrationDevice({
    regions: syntheticLayout(options.size),
    pageSize: options.pageSize,
    tracking: options.tracking,
    deviceId: options.deviceId,
  });
  const random = prng(options.seed);
  const noise = noiseFill(options.seed);
  // One descriptor table block, stamped with a per-block counter so blocks are not identical.
  const table = new Uint8Array(BLOCK);
  const tableView = new DataView(table.buffer);
  for (let at = 0; at < BLOCK; at += 64) {
    tableView.setUint32(at, 0xd5c0_0000 | (at >>> 6), true);
    tableView.setUint32(at + 4, 0x1000 + at, true);
    tableView.setBigUint64(at + 8, 0x0000_7f00_0000_0000n + BigInt(at) * 4096n, true);
    tableView.setUint16(at + 16, 0x0101, true);
  }
  // Each byte of the device is written once, in place, zero blocks included: a device's state
  // is resident memory, and fresh memory left untouched here would be faulted in by the first
  // pre-copy pass instead (reading it costs as much as writing, ~4 ms/MiB on a microVM), which
  // would charge the device's setup to the migration's throughput. Per-word stamps go through
  // one 32-bit view of the region rather than an object per word (block offsets are multiples
  // of 64 KiB, so 4-byte aligned). Nothing here allocates in core memory, so the views stay
  // attached.
  device.model.regions.forEach((region, i) => {
    const bytes = device.model.view(i);
    const words = new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.length >>> 2);
    for (let at = 0; at < region.size; at += BLOCK) {
      const length = Math.min(BLOCK, region.size - at);
      const kind = random() % 100;
      if (kind < 35) {
        bytes.fill(0, at, at + length); // zero, and resident like the rest
        continue;
      }
      if (kind < 55) {
        bytes.set(table.subarray(0, length), at);
        const stamp = random();
        for (let o = 20; o + 4 <= length; o += 64) words[(at + o) >>> 2] = stamp;
      } else if (kind < 70) {
        for (let o = 0; o + 8 <= length; o += 512 + (random() % 8) * 64) words[(at + o) >>> 2] = random();
      } else {
        noise(words, at >>> 2, length >>> 2);
      }
    }
  });
  // The initial content is not "dirty": the first pre-copy pass sends everything anyway.
  device.model.resetTracking();
  return device;
}

export interface WorkloadStats {
  /** Page writes done while the device ran. */
  writes: number;
  /** Distinct bytes written by those writes (bytes, not pages). */
  bytes: number;
  /** State the device was in when the workload noticed it had stopped. */
  stoppedAt: string | undefined;
}

/**
 * A guest writing to the device at `pagesPerSecond`: each write changes 64 to 512 bytes of one
 * page, 80% of them in a hot set (1/32 of the state, where real workloads keep their buffers),
 * the rest anywhere. It writes in catch-up bursts from a 1 ms timer (the event loop is shared
 * with the migration) and stops for good the moment the device stops running.
 */
export class Workload {
  readonly #device: MigrationDevice;
  readonly #rate: number;
  readonly #random: () => number;
  readonly #bytes: (length: number) => Buffer;
  #timer: ReturnType<typeof setInterval> | undefined;
  #started = 0;
  readonly stats: WorkloadStats = { writes: 0, bytes: 0, stoppedAt: undefined };

  constructor(device: MigrationDevice, pagesPerSecond: number, seed: number) {
    this.#device = device;
    this.#rate = pagesPerSecond;
    this.#random = prng(seed ^ 0x5bd1e995);
    this.#bytes = keystream(seed, "workload");
  }

  start(): void {
    if (this.#rate <= 0 || this.#timer) return;
    this.#started = performance.now();
    this.#timer = setInterval(() => this.#tick(), 1);
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
    // Stopped by its owner after the migration: say where the device was, as a tick would have.
    if (this.#started > 0 && !this.#device.running) this.stats.stoppedAt ??= this.#device.state;
  }

  #tick(): void {
    const device = this.#device;
    if (!device.running) {
      this.stats.stoppedAt = device.state;
      this.stop();
      return;
    }
    const due = Math.floor(((performance.now() - this.#started) / 1000) * this.#rate) - this.stats.writes;
    // A long synchronous encode step delays ticks; catch up, but never by more than 1/4 s.
    const burst = Math.min(due, Math.ceil(this.#rate / 4));
    if (burst <= 0) return;
    const regions = device.model.regions;
    const pageSize = device.model.pageSize;
    const noise = this.#bytes(burst * 512);
    for (let n = 0; n < burst; n++) {
      // 10% of writes go to the register file, the rest to memory.
      const region = regions.length > 1 && this.#random() % 10 === 0 ? 0 : regions.length - 1;
      const size = regions[region]!.size;
      const pages = Math.ceil(size / pageSize);
      const hot = Math.max(1, Math.floor(pages / 32));
      const page = this.#random() % 100 < 80 ? this.#random() % hot : this.#random() % pages;
      const length = Math.min(64 * (1 + (this.#random() % 8)), size - page * pageSize);
      const offset = page * pageSize + (this.#random() % Math.max(1, Math.min(pageSize, size - page * pageSize) - length + 1));
      try {
        device.write(region, offset, noise.subarray(n * 512, n * 512 + length));
      } catch (error) {
        // The device stopped between ticks (stop-copy): a stopped device takes no writes.
        if (error instanceof MigrationError && error.code === "EINVAL" && !device.running) {
          this.stats.stoppedAt = device.state;
          this.stop();
          return;
        }
        throw error;
      }
      this.stats.writes++;
      this.stats.bytes += length;
    }
  }
}
