// Resuming without copies: a full stream never reads the device's old content, an incremental
// one copies on write only the chunks it changes, commit swaps blocks, staging is reused, and
// a failed stream leaves the device's content byte-identical.
import { describe, expect, test } from "vitest";
import { encodeSnapshot } from "../../src/codec/snapshot.js";
import type { RegionSpec } from "../../src/format/header.js";
import { migrateIn } from "../../src/migration/precopy.js";
import { ResumingSession } from "../../src/migration/resuming-session.js";
import { MigrationDevice } from "../../src/migration/v2/migration-device.js";
import { PAGE, rng } from "./helpers.js";

const ID = "copies";
const REGIONS: readonly RegionSpec[] = [
  { name: "regs", size: PAGE },
  { name: "mem", size: 256 * PAGE + 123 },
];
const SIZE = REGIONS.reduce((n, r) => n + r.size, 0);

/** Byte equality without a deep diff of a megabyte (slow in the test runner). */
function expectSame(actual: Uint8Array, expected: Uint8Array): void {
  expect(actual.length).toBe(expected.length);
  expect(Buffer.compare(Buffer.from(actual.buffer, actual.byteOffset, actual.length), Buffer.from(expected.buffer, expected.byteOffset, expected.length))).toBe(
    0,
  );
}

function content(seed: number): Uint8Array {
  const random = rng(seed);
  const out = new Uint8Array(SIZE);
  for (let i = 0; i < SIZE; i += 8) out[i] = Math.floor(random() * 256);
  // Some zero pages, which full streams carry as ZERO records.
  out.fill(0, 10 * PAGE, 40 * PAGE);
  return out;
}

function deviceWith(state: Uint8Array): MigrationDevice {
  const device = new MigrationDevice({ regions: REGIONS, deviceId: ID });
  let at = 0;
  device.model.regions.forEach((r, i) => {
    device.model.write(i, 0, state.subarray(at, at + r.size));
    at += r.size;
  });
  device.model.resetTracking();
  return device;
}

async function resuming(device: MigrationDevice): Promise<ResumingSession> {
  await device.setState("STOP");
  const session = await device.setState("RESUMING");
  if (!(session instanceof ResumingSession)) throw new Error("no resuming session");
  return session;
}

describe("full streams", () => {
  test("never read the device's old content: its blocks can be gone entirely", async () => {
    const device = deviceWith(content(1));
    const state = content(2);
    const stream = encodeSnapshot(state, { regions: REGIONS, deviceId: ID });
    const session = await resuming(device);
    // Free the device's region blocks: any read of them through the API now throws, so a
    // resume that succeeds never touched them (no copy into staging, no digest).
    for (const r of device.model.regions) r.data.free();
    session.write(stream);
    expect(session.summary().work.bytesCopied).toBe(0);
    await device.setState("RUNNING");
    expectSame(device.model.snapshot(), state);
  });

  test("commit swaps blocks, and the old block stages the next migration", async () => {
    const device = deviceWith(content(3));
    const region = device.model.regions[1]!;
    const before = region.data.ptr;
    await migrateIn(device, [encodeSnapshot(content(4), { regions: REGIONS, deviceId: ID })]);
    const first = region.data.ptr;
    expect(first).not.toBe(before);
    await migrateIn(device, [encodeSnapshot(content(5), { regions: REGIONS, deviceId: ID })]);
    // The block the first resume swapped out came back from the pool as staging.
    expect(region.data.ptr).toBe(before);
    expectSame(device.model.snapshot(), content(5));
  });

  test("a failed stream after partial delivery leaves the content byte-identical", async () => {
    const original = content(6);
    const device = deviceWith(original);
    const stream = encodeSnapshot(content(7), { regions: REGIONS, deviceId: ID });
    const session = await resuming(device);
    session.write(stream.subarray(0, Math.floor(stream.length * 0.8)));
    expectSame(device.model.snapshot(), original);
    await expect(device.setState("RUNNING")).rejects.toMatchObject({ code: "ENODATA" });
    expectSame(device.model.snapshot(), original);
  });
});

describe("incremental streams", () => {
  function changed(base: Uint8Array): Uint8Array {
    const next = base.slice();
    // Pages in three chunks of "mem", one in "regs".
    next.fill(0xee, PAGE + 3 * PAGE, PAGE + 4 * PAGE);
    next.fill(0x11, PAGE + 100 * PAGE + 5, PAGE + 100 * PAGE + 50);
    next.fill(0, PAGE + 200 * PAGE, PAGE + 232 * PAGE);
    next[7] = 0x42;
    return next;
  }

  test("copy on write: only chunks the stream writes are copied, and the device stays untouched until commit", async () => {
    const base = content(8);
    const device = deviceWith(base);
    const state = changed(base);
    const stream = encodeSnapshot(state, { base, regions: REGIONS, deviceId: ID });
    const session = await resuming(device);
    session.write(stream);
    const copied = session.summary().work.bytesCopied;
    // At most the chunks written (64 KiB each; "regs" is one chunk of a page), far from the
    // whole state.
    expect(copied).toBeGreaterThan(0);
    expect(copied).toBeLessThanOrEqual(4 * 65536 + PAGE);
    expectSame(device.model.snapshot(), base);
    await device.setState("RUNNING");
    expectSame(device.model.snapshot(), state);
  });

  test("LZ4 records copy on write like raw ones: decoded into their pages after the chunk is staged", async () => {
    const base = content(10);
    const device = deviceWith(base);
    const state = changed(base);
    const stream = encodeSnapshot(state, { base, regions: REGIONS, deviceId: ID, compress: "lz4" });
    const session = await resuming(device);
    session.write(stream);
    // The 0xee page is smaller compressed than raw or as a delta: it arrives as an LZ4 record
    // in the middle of a chunk whose other pages must keep the base's bytes.
    expect(session.summary().records.lz4).toBeGreaterThan(0);
    expectSame(device.model.snapshot(), base);
    await device.setState("RUNNING");
    expectSame(device.model.snapshot(), state);
  });

  test("a failed stream after partial delivery leaves the content byte-identical", async () => {
    const base = content(9);
    const device = deviceWith(base);
    const stream = encodeSnapshot(changed(base), { base, regions: REGIONS, deviceId: ID });
    const session = await resuming(device);
    // Everything but the END record: every page applied into staging, nothing committed.
    session.write(stream.subarray(0, stream.length - 56));
    expect(session.summary().pages.raw + session.summary().pages.zero + session.summary().pages.delta).toBeGreaterThan(0);
    await expect(device.setState("RUNNING")).rejects.toMatchObject({ code: "ENODATA" });
    expectSame(device.model.snapshot(), base);
  });
});
