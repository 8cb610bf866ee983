// The pre-copy driver: why pre-copy ends (threshold, max-rounds, no-progress), per-round reports
// consistent with the stream's own ROUND records, downtime estimates at a given bandwidth, and
// aborting through an AbortSignal (ECANCELED, source back in RUNNING).
import { randomFillSync } from "node:crypto";
import { describe, expect, it } from "vitest";
import { StreamDecoder } from "../../src/codec/decoder.js";
import { MemoryTarget } from "../../src/codec/memory-target.js";
import { MigrationError } from "../../src/core/errors.js";
import { migrateIn, migrateOut, type MigrationReport, type PrecopyOptions, type PrecopyRoundReport } from "../../src/migration/precopy.js";
import { MigrationDevice } from "../../src/migration/v2/migration-device.js";
import type { DirtyTracking } from "../../src/device/device-model.js";
import { concat, expectCode, expectSameBytes, fillRandom, makeDevice, PAGE, TRACKINGS } from "./helpers.js";

/** A device with a 4 MiB "hot" region of incompressible data (several encoder windows a pass). */
function hotDevice(tracking: DirtyTracking = "explicit"): MigrationDevice {
  const device = new MigrationDevice({
    regions: [
      { name: "regs", size: 2 * PAGE },
      { name: "hot", size: 4 << 20 },
    ],
    tracking,
    features: { p2p: true, precopy: true },
  });
  device.write("hot", 0, randomFillSync(new Uint8Array(4 << 20)));
  device.write("regs", 0, randomFillSync(new Uint8Array(2 * PAGE)));
  return device;
}

/**
 * A heavy workload driven by the link: every chunk sent, the device rewrites its whole hot region
 * with fresh incompressible bytes (a random pool at a new shift: no delta helps), so each round
 * ends with the region dirty again. It stops when the device does.
 */
function heavyLink(device: MigrationDevice, chunks: Uint8Array[]): PrecopyOptions["send"] {
  let counter = 0;
  const size = 4 << 20;
  const pool = randomFillSync(new Uint8Array(size + 4096));
  return (chunk) => {
    chunks.push(chunk);
    if (!device.running) return;
    counter = (counter + 1) % 4096;
    device.write("hot", 0, pool.subarray(counter, counter + size));
  };
}

/** The ROUND records of a stream, as a decoder reads them. */
function decodeRounds(stream: Uint8Array, device: MigrationDevice): StreamDecoder["rounds"] {
  const target = new MemoryTarget();
  const decoder = new StreamDecoder(target, { regions: device.model.layout });
  decoder.push(stream, true);
  target.result();
  return decoder.rounds;
}

function checkReport(report: MigrationReport, stream: Uint8Array, device: MigrationDevice, bandwidth?: number): void {
  expect(report.bytes).toBe(stream.length);
  expect(report.stopCopyBytes).toBeGreaterThan(0);
  expect(report.stopCopyBytes).toBeLessThanOrEqual(report.bytes);
  expect(report.downtimeMs).toBeGreaterThanOrEqual(0);
  expect(report.durationMs).toBeGreaterThanOrEqual(report.downtimeMs);
  expect(report.throughput).toBeGreaterThan(0);
  // Every round the stream carries is reported, in order, with the same numbers.
  const decoded = decodeRounds(stream, device);
  expect(report.rounds.map((r) => ({ round: r.round, pages: r.pages, bytes: r.bytes, dirtyBytes: r.dirtyBytes }))).toEqual(decoded);
  report.rounds.forEach((r, i) => {
    expect(r.round).toBe(i);
    expect(r.pages).toBeGreaterThan(0);
    expect(r.bytes).toBeGreaterThan(0);
    expect(r.bytes).toBeGreaterThanOrEqual(r.pages === 0 ? 0 : 32);
    expect(r.dirtyBytes % PAGE).toBe(0);
    expect(r.durationMs).toBeGreaterThanOrEqual(0);
    expect(r.dirtyRate).toBeGreaterThanOrEqual(0);
    expect(Number.isFinite(r.dirtyRate)).toBe(true);
    if (bandwidth !== undefined) expect(r.expectedDowntimeMs).toBeCloseTo((r.dirtyBytes / bandwidth) * 1000, 9);
    else expect(Number.isFinite(r.expectedDowntimeMs)).toBe(true);
  });
  // The first round sends every page.
  if (report.rounds.length > 0) {
    expect(report.rounds[0]!.pages).toBe(device.model.regions.reduce((n, r) => n + r.pages, 0));
  }
}

async function resumeAndCompare(stream: Uint8Array, source: MigrationDevice): Promise<void> {
  const target = new MigrationDevice({ regions: source.model.layout, tracking: source.model.tracking });
  await migrateIn(target, [stream]);
  expect(target.model.digest()).toBe(source.model.digest());
  expectSameBytes(target.model.snapshot(), source.model.snapshot());
  target.free();
}

describe("convergence", () => {
  it.each(TRACKINGS)("%s: an idle device converges on the threshold after the first round", async (tracking) => {
    const device = makeDevice({ tracking });
    fillRandom(device, 300);
    const chunks: Uint8Array[] = [];
    const seen: PrecopyRoundReport[] = [];
    const bandwidth = 10 << 20;
    const report = await migrateOut(device, { send: (c) => void chunks.push(c), bandwidth, onRound: (r) => seen.push(r) });
    expect(report.converged).toBe("threshold");
    expect(report.rounds.length).toBe(1);
    expect(report.rounds[0]!.dirtyBytes).toBe(0);
    expect(seen).toEqual(report.rounds);
    const stream = concat(chunks);
    checkReport(report, stream, device, bandwidth);
    expect(device.state).toBe("STOP");
    await resumeAndCompare(stream, device);
    device.free();
  });

  it.each(TRACKINGS)("%s: a heavy workload runs into max-rounds", async (tracking) => {
    const device = hotDevice(tracking);
    const chunks: Uint8Array[] = [];
    const bandwidth = 50 << 20;
    // The first round ends with less dirty than the next ones (pages sent last were not
    // rewritten yet): growth up to 2x counts as progress here, so only maxRounds ends pre-copy.
    const report = await migrateOut(device, { send: heavyLink(device, chunks), thresholdBytes: PAGE, maxRounds: 3, minProgress: -1, bandwidth });
    expect(report.converged).toBe("max-rounds");
    expect(report.rounds.length).toBe(3);
    // Most of the hot region is dirty again at the end of every round (shadow tracking is exact
    // about pages rewritten before they were sent; the others count them too).
    for (const r of report.rounds) expect(r.dirtyBytes).toBeGreaterThanOrEqual(3 << 20);
    const stream = concat(chunks);
    checkReport(report, stream, device, bandwidth);
    expect(report.rounds[2]!.expectedDowntimeMs).toBeCloseTo((report.rounds[2]!.dirtyBytes / bandwidth) * 1000, 6);
    expect(report.rounds[2]!.expectedDowntimeMs).toBeGreaterThanOrEqual(60);
    await resumeAndCompare(stream, device);
    device.free();
  });

  it("rounds that do not shrink the dirty set end pre-copy with no-progress", async () => {
    const device = hotDevice();
    const chunks: Uint8Array[] = [];
    const report = await migrateOut(device, { send: heavyLink(device, chunks), thresholdBytes: PAGE, maxRounds: 30 });
    expect(report.converged).toBe("no-progress");
    expect(report.rounds.length).toBe(2);
    expect(report.rounds[1]!.dirtyBytes).toBeGreaterThan(report.rounds[0]!.dirtyBytes * 0.95);
    const stream = concat(chunks);
    checkReport(report, stream, device);
    await resumeAndCompare(stream, device);
    device.free();
  });

  it("a device without PRE_COPY goes straight to stop-copy", async () => {
    const device = makeDevice({ features: { p2p: true, precopy: false } });
    fillRandom(device, 301);
    const chunks: Uint8Array[] = [];
    const report = await migrateOut(device, { send: (c) => void chunks.push(c) });
    expect(report.converged).toBe("no-precopy");
    expect(report.rounds).toEqual([]);
    expect(report.stopCopyBytes).toBe(report.bytes);
    checkReport(report, concat(chunks), device);
    await resumeAndCompare(concat(chunks), device);
    device.free();
  });

  it("without a bandwidth the estimate uses the measured throughput", async () => {
    const device = hotDevice();
    const chunks: Uint8Array[] = [];
    const report = await migrateOut(device, { send: heavyLink(device, chunks), thresholdBytes: PAGE, maxRounds: 2, minProgress: -1 });
    expect(report.converged).toBe("max-rounds");
    for (const r of report.rounds) {
      expect(r.expectedDowntimeMs).toBeGreaterThanOrEqual(0);
      if (r.dirtyBytes > 0) expect(r.expectedDowntimeMs).toBeGreaterThan(0);
    }
    device.free();
  });
});

describe("abort and failure", () => {
  it("an abort during pre-copy fails with ECANCELED and gives the device back to its workload", async () => {
    const device = hotDevice();
    const controller = new AbortController();
    const chunks: Uint8Array[] = [];
    const link = heavyLink(device, chunks);
    const error = await expectCode(
      () =>
        migrateOut(device, {
          send: link,
          thresholdBytes: 0,
          maxRounds: 100,
          minProgress: -1,
          signal: controller.signal,
          onRound: (r) => {
            if (r.round === 1) controller.abort();
          },
        }),
      "ECANCELED",
    );
    expect(error.state).toMatch(/^PRE_COPY/);
    expect(device.state).toBe("RUNNING");
    expect(device.session).toBeUndefined();
    device.write("hot", 0, new Uint8Array([1]));
    // The device can be migrated again afterwards, from scratch.
    const again: Uint8Array[] = [];
    await migrateOut(device, { send: (c) => void again.push(c) });
    await resumeAndCompare(concat(again), device);
    device.free();
  });

  it("an abort from the link (inside send) is noticed before the next read", async () => {
    const device = makeDevice();
    fillRandom(device, 302);
    const controller = new AbortController();
    await expectCode(
      () =>
        migrateOut(device, {
          send: () => controller.abort(),
          signal: controller.signal,
        }),
      "ECANCELED",
    );
    expect(device.state).toBe("RUNNING");
    device.free();
  });

  it("an already aborted signal fails before anything is sent", async () => {
    const device = makeDevice();
    const chunks: Uint8Array[] = [];
    await expectCode(() => migrateOut(device, { send: (c) => void chunks.push(c), signal: AbortSignal.abort() }), "ECANCELED");
    expect(chunks).toEqual([]);
    expect(device.state).toBe("RUNNING");
    device.free();
  });

  it("a failing link aborts the migration with its error, device back in RUNNING", async () => {
    const device = makeDevice();
    fillRandom(device, 303);
    const boom = new Error("link down");
    let caught: unknown;
    try {
      await migrateOut(device, {
        send: () => {
          throw boom;
        },
      });
    } catch (error) {
      caught = error;
    }
    expect(caught).toBe(boom);
    expect(device.state).toBe("RUNNING");
    device.free();
  });

  it("a failing saveConfig at stop-copy leaves the device where the arc failed", async () => {
    const device = makeDevice({
      features: { p2p: true, precopy: true },
      callbacks: { saveConfig: () => Promise.reject(new MigrationError("EIO", "config")) },
    });
    const error = await expectCode(() => migrateOut(device, { send: () => undefined }), "EIO");
    expect(error.state).toBe("PRE_COPY_P2P");
    // migrateOut gives a pre-copying device back to its workload.
    expect(device.state).toBe("RUNNING");
    device.free();
  });
});

describe("a transport failure during stop-copy", () => {
  it("gives the source device back to RUNNING", async () => {
    const device = new MigrationDevice({ regions: [{ name: "ram", size: 256 * 1024 }], features: { precopy: false } });
    try {
      let sent = 0;
      await expect(
        migrateOut(device, {
          send: () => {
            if (++sent === 2) throw new MigrationError("EIO", "link down");
          },
          chunkSize: 4096,
        }),
      ).rejects.toMatchObject({ code: "EIO" });
      expect(device.state).toBe("RUNNING");
      device.write("ram", 0, Uint8Array.of(1));
    } finally {
      device.free();
    }
  });
});
