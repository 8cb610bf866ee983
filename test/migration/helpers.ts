// Shared fixtures for the migration tests: devices, deterministic random content, a workload
// that dirties a running device, and loops that drain a session the way a VMM would.
import { expect } from "vitest";
import { MigrationError, type MigrationErrorCode } from "../../src/core/errors.js";
import type { DirtyTracking } from "../../src/device/device-model.js";
import type { RegionSpec } from "../../src/format/header.js";
import { SavingSession } from "../../src/migration/saving-session.js";
import { ResumingSession } from "../../src/migration/resuming-session.js";
import { MigrationDevice, type MigrationDeviceOptions } from "../../src/migration/v2/migration-device.js";
import type { MigrationFeatures } from "../../src/migration/v2/states.js";
import { concatBytes } from "../../src/core/bytes.js";

export const TRACKINGS: readonly DirtyTracking[] = ["explicit", "shadow", "hash"];

export const FEATURE_SETS: ReadonlyArray<{ name: string; features: Required<MigrationFeatures> }> = [
  { name: "STOP_COPY", features: { p2p: false, precopy: false } },
  { name: "P2P", features: { p2p: true, precopy: false } },
  { name: "PRE_COPY", features: { p2p: false, precopy: true } },
  { name: "P2P|PRE_COPY", features: { p2p: true, precopy: true } },
];

export const PAGE = 4096;

/** Several regions, one of them not a whole number of pages. */
export const REGIONS: readonly RegionSpec[] = [
  { name: "config-space", size: 256 },
  { name: "bar0", size: 16 * PAGE },
  { name: "ram", size: 40 * PAGE + 123 },
];

/** A small deterministic PRNG (mulberry32): the same seed gives the same workload. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function randomBytes(random: () => number, length: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i += 4) {
    const v = Math.floor(random() * 4294967296);
    out[i] = v & 0xff;
    if (i + 1 < length) out[i + 1] = (v >>> 8) & 0xff;
    if (i + 2 < length) out[i + 2] = (v >>> 16) & 0xff;
    if (i + 3 < length) out[i + 3] = v >>> 24;
  }
  return out;
}

export function makeDevice(options: Partial<MigrationDeviceOptions> & { tracking?: DirtyTracking } = {}): MigrationDevice {
  return new MigrationDevice({ regions: REGIONS, ...options });
}

/** Fills every region of a running device with random bytes (through the workload's write). */
export function fillRandom(device: MigrationDevice, seed: number): void {
  const random = rng(seed);
  for (const r of device.model.regions) device.write(r.name, 0, randomBytes(random, r.size));
}

/** Fills every region with one byte value. */
export function fillWith(device: MigrationDevice, value: number): void {
  for (const r of device.model.regions) device.write(r.name, 0, new Uint8Array(r.size).fill(value));
}

/** Reads a saving session until the end (null) or, in pre-copy, until ENOMSG. */
export function drain(session: SavingSession, out: Uint8Array[] = [], max = 1 << 20): { chunks: Uint8Array[]; end: "eof" | "enomsg" } {
  for (;;) {
    let chunk: Uint8Array | null;
    try {
      chunk = session.read(max);
    } catch (error) {
      if (error instanceof MigrationError && error.code === "ENOMSG") return { chunks: out, end: "enomsg" };
      throw error;
    }
    if (chunk === null) return { chunks: out, end: "eof" };
    expect(chunk.length).toBeGreaterThan(0);
    expect(chunk.length).toBeLessThanOrEqual(max);
    out.push(chunk);
  }
}

export const concat = concatBytes;

/** Re-cuts a stream into pieces of random sizes (segmentation is not part of the protocol). */
export function resegment(stream: Uint8Array, random: () => number, maxPiece = 5000): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let at = 0; at < stream.length; ) {
    const n = 1 + Math.floor(random() * maxPiece);
    out.push(stream.subarray(at, at + n));
    at += n;
  }
  return out;
}

/** Runs `fn`, expecting a MigrationError with `code`; returns it for more checks. */
export async function expectCode(fn: () => unknown, code: MigrationErrorCode): Promise<MigrationError> {
  let caught: unknown;
  try {
    await fn();
  } catch (error) {
    caught = error;
  }
  expect(caught, `expected ${code}`).toBeInstanceOf(MigrationError);
  expect((caught as MigrationError).code, (caught as Error).message).toBe(code);
  return caught as MigrationError;
}

export function asSaving(session: unknown): SavingSession {
  expect(session).toBeInstanceOf(SavingSession);
  return session as SavingSession;
}

export function asResuming(session: unknown): ResumingSession {
  expect(session).toBeInstanceOf(ResumingSession);
  return session as ResumingSession;
}

/**
 * A workload that keeps writing random bytes at random places while the device runs, from a
 * timer. A write that throws (the device stopped) ends it: `stopped` resolves with the number of
 * writes done and the error that ended it.
 */
export function startWorkload(
  device: MigrationDevice,
  options: { seed: number; writesPerTick?: number; maxWrite?: number; intervalMs?: number },
): { stop: () => void; stopped: Promise<{ writes: number; error: unknown }> } {
  const random = rng(options.seed);
  const perTick = options.writesPerTick ?? 4;
  const maxWrite = options.maxWrite ?? 512;
  let writes = 0;
  let timer: ReturnType<typeof setInterval> | undefined;
  let resolve!: (v: { writes: number; error: unknown }) => void;
  const stopped = new Promise<{ writes: number; error: unknown }>((r) => (resolve = r));
  const finish = (error: unknown): void => {
    if (timer === undefined) return;
    clearInterval(timer);
    timer = undefined;
    resolve({ writes, error });
  };
  timer = setInterval(() => {
    try {
      for (let i = 0; i < perTick; i++) {
        const region = device.model.regions[Math.floor(random() * device.model.regions.length)]!;
        if (region.size === 0) continue;
        const length = 1 + Math.floor(random() * Math.min(maxWrite, region.size));
        const offset = Math.floor(random() * (region.size - length + 1));
        device.write(region.name, offset, randomBytes(random, length));
        writes++;
      }
    } catch (error) {
      finish(error);
    }
  }, options.intervalMs ?? 1);
  return { stop: () => finish(undefined), stopped };
}

/** Byte equality without a deep element-wise compare (slow on large arrays); names the first difference. */
export function expectSameBytes(actual: Uint8Array, expected: Uint8Array, what = "bytes"): void {
  const a = Buffer.from(actual.buffer, actual.byteOffset, actual.length);
  const b = Buffer.from(expected.buffer, expected.byteOffset, expected.length);
  if (a.equals(b)) return;
  let i = 0;
  while (i < Math.min(a.length, b.length) && a[i] === b[i]) i++;
  expect.fail(`${what} differ: lengths ${a.length} / ${b.length}, first difference at byte ${i}`);
}

/** Pages of text-like, repeated-byte and zero content: compressible, like much device state. */
export function fillCompressible(device: MigrationDevice, seed: number): void {
  for (const region of device.model.layout) {
    const bytes = new Uint8Array(region.size);
    for (let i = 0; i < bytes.length; i++) {
      const page = Math.floor(i / PAGE);
      bytes[i] = page % 3 === 0 ? 0 : page % 3 === 1 ? (seed + page) & 0xff : "register "[(i + seed) % 9]!.charCodeAt(0);
    }
    device.write(region.name, 0, bytes);
  }
}
