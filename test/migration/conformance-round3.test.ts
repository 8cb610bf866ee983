// Conformance, round three: each test is named after the uAPI sentence it checks.
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { migrateIn } from "../../src/migration/precopy.js";
import { VFIO_PRECOPY_INFO_REINIT } from "../../src/migration/uapi.js";
import { asSaving, concat, drain, expectCode, fillCompressible, fillRandom, makeDevice, PAGE, randomBytes, rng } from "./helpers.js";

/** A device of 4 MiB, enough for a session to measure its own compression ratio. */
const BIG = [
  { name: "regs", size: 256 },
  { name: "ram", size: 4 << 20 },
];

/** Estimate / actual within [1/2, 2]: an estimate, but in stream bytes (not 42-241x too high). */
function expectNear(estimate: number, actual: number, what: string): void {
  expect(estimate, `${what}: estimate ${estimate} vs ${actual} stream bytes`).toBeGreaterThanOrEqual(actual / 2);
  expect(estimate, `${what}: estimate ${estimate} vs ${actual} stream bytes`).toBeLessThanOrEqual(actual * 2);
}

describe("VFIO_PRECOPY_INFO_REINIT", () => {
  it("'dirty_bytes is also reset to zero and represents the state change of the device relative to the new initial_bytes'", async () => {
    const device = makeDevice({ precopyInfoV2: true });
    fillRandom(device, 31);
    const session = asSaving(await device.setState("PRE_COPY"));
    drain(session);
    // Dirty pages, partly read: some of their stream bytes wait in the session's queue.
    device.write("ram", 0, randomBytes(rng(32), 8 * PAGE));
    session.read(100);
    const before = device.precopyInfoV2();
    expect(before.dirtyBytes).toBeGreaterThan(0);
    device.reinitialize();
    const after = device.precopyInfoV2();
    expect(after.flags).toBe(VFIO_PRECOPY_INFO_REINIT);
    expect(after.dirtyBytes).toBe(0);
    // "any previously dirty bytes ... are treated as initial bytes"
    expect(after.initialBytes).toBeGreaterThanOrEqual(before.dirtyBytes);
    device.free();
  });

  it("'the caller must read both sets before' the initial data counts as sent: initialDataSent waits for the queued dirty bytes", async () => {
    const device = makeDevice({ precopyInfoV2: true });
    fillRandom(device, 33);
    const session = asSaving(await device.setState("PRE_COPY"));
    const chunks = drain(session).chunks;
    device.write("bar0", 0, randomBytes(rng(34), 4 * PAGE));
    chunks.push(session.read(100)!);
    device.reinitialize();
    let initial = device.precopyInfoV2().initialBytes;
    // Read the rest in small pieces: initial_bytes only falls, and reaches 0 with the last one.
    while (!session.initialDataSent) {
      const chunk = session.read(997);
      expect(chunk).not.toBeNull();
      chunks.push(chunk!);
      const info = device.precopyInfoV2();
      expect(info.initialBytes).toBeLessThanOrEqual(initial);
      initial = info.initialBytes;
    }
    expect(device.precopyInfoV2()).toEqual({ initialBytes: 0, dirtyBytes: 0, flags: 0 });
    await device.setState("STOP_COPY");
    drain(session, chunks);
    const target = makeDevice();
    await migrateIn(target, chunks);
    expect(target.model.digest()).toBe(device.model.digest());
    device.free();
    target.free();
  });
});

describe("estimates in stream bytes with compress: lz4", () => {
  it("'initial_bytes ... decrease as migration data is read' counts stream bytes: the first answer is near the initial data read", async () => {
    const device = makeDevice({ regions: BIG, compress: "lz4" });
    fillCompressible(device, 1);
    const session = asSaving(await device.setState("PRE_COPY"));
    const { initialBytes } = device.precopyInfo();
    let read = 0;
    while (!session.initialDataSent) read += session.read(1 << 20)!.length;
    expectNear(initialBytes, read, "initial_bytes");
    device.free();
  });

  it("'dirty_bytes tracks device state changes relative to data previously retrieved' in stream bytes", async () => {
    const device = makeDevice({ regions: BIG, compress: "lz4" });
    fillCompressible(device, 2);
    const session = asSaving(await device.setState("PRE_COPY"));
    drain(session);
    // Rewrite a quarter of the pages with other compressible content.
    const random = rng(3);
    for (let page = 0; page < (4 << 20) / PAGE; page += 4) {
      device.write(
        "ram",
        page * PAGE,
        new TextEncoder().encode("status=ok;".repeat(PAGE / 10 + 1).slice(0, PAGE - (page % 7)) + String(random())).subarray(0, PAGE),
      );
    }
    const { dirtyBytes } = device.precopyInfo();
    const round = concat(drain(session).chunks).length;
    expectNear(dirtyBytes, round, "dirty_bytes");
    device.free();
  });

  it("'VFIO_DEVICE_FEATURE_MIG_DATA_SIZE ... the estimated data length that will be required to complete stop copy' in stream bytes", async () => {
    const device = makeDevice({ regions: BIG, compress: "lz4" });
    fillCompressible(device, 4);
    const estimate = device.stopCopySize();
    const session = asSaving(await device.setState("STOP_COPY"));
    const inSession = device.stopCopySize();
    const stream = concat(drain(session).chunks);
    expectNear(estimate, stream.length, "MIG_DATA_SIZE before the session");
    expectNear(inSession, stream.length, "MIG_DATA_SIZE in STOP_COPY");
    device.free();
  });

  it("uncompressible content keeps whole pages: the estimate does not fall below what is sent", async () => {
    const device = makeDevice({ regions: BIG, compress: "lz4" });
    fillRandom(device, 5);
    const estimate = device.stopCopySize();
    const session = asSaving(await device.setState("STOP_COPY"));
    const stream = concat(drain(session).chunks);
    expect(estimate).toBeGreaterThanOrEqual(stream.length * 0.95);
    expectNear(estimate, stream.length, "MIG_DATA_SIZE");
    device.free();
  });
});

describe("DMA_LOGGING_REPORT page_size", () => {
  it("'report.page_size < SZ_4K || !is_power_of_2(report.page_size)' is EINVAL", async () => {
    const device = makeDevice();
    device.startDmaLogging({ ranges: [{ iova: 0, length: 1 << 20 }], pageSize: 4096 });
    for (const pageSize of [0, 512, 2048, 3 * 4096, 4096 + 1, 2 ** 20 + 4096]) {
      await expectCode(() => device.reportDmaLogging({ iova: 0, length: 1 << 20, pageSize }), "EINVAL");
    }
    device.free();
  });

  it("'The input page_size can be any power of two value': 2^31 is accepted", () => {
    const device = makeDevice();
    device.startDmaLogging({ ranges: [{ iova: 2 ** 31, length: 2 ** 31 }], pageSize: 4096 });
    device.dmaWrite(2 ** 31 + 12345, new Uint8Array(8));
    const bitmap = device.reportDmaLogging({ iova: 2 ** 31, length: 2 ** 31, pageSize: 2 ** 31 });
    expect(bitmap).toHaveLength(8);
    expect(bitmap[0]).toBe(1);
    expect(device.reportDmaLogging({ iova: 2 ** 31, length: 2 ** 31, pageSize: 2n ** 31n })[0]).toBe(0);
    device.free();
  });
});

describe("64-bit IOVAs", () => {
  const TOP = 2n ** 64n;

  it("'__aligned_u64 iova': IOVAs up to 2^64 - 1 as bigints start, record and report", () => {
    const device = makeDevice();
    const base = TOP - 2n ** 20n - 4096n; // the last range must end below 2^64
    device.startDmaLogging({ ranges: [{ iova: base, length: 2n ** 20n }], pageSize: 4096 });
    device.dmaWrite(base + 5n * 4096n + 7n, new Uint8Array(4096)); // pages 5 and 6
    const bitmap = device.reportDmaLogging({ iova: base, length: 2n ** 20n, pageSize: 4096 });
    expect(bitmap[0]).toBe(0b0110_0000);
    device.free();
  });

  it("'check_add_overflow(range.iova, range.length, &iova_end)' in DMA_LOGGING_START is EOVERFLOW", async () => {
    const device = makeDevice();
    await expectCode(() => device.startDmaLogging({ ranges: [{ iova: TOP - 4096n, length: 4096 }], pageSize: 4096 }), "EOVERFLOW");
    await expectCode(() => device.startDmaLogging({ ranges: [{ iova: TOP - 4096n, length: 8192n }], pageSize: 4096 }), "EOVERFLOW");
    expect(device.model.dma.active).toBe(false);
    device.free();
  });

  it("'check_add_overflow(report.iova, report.length, &iova_end)' in DMA_LOGGING_REPORT is EOVERFLOW", async () => {
    const device = makeDevice();
    device.startDmaLogging({ ranges: [{ iova: 0, length: 1 << 20 }], pageSize: 4096 });
    await expectCode(() => device.reportDmaLogging({ iova: TOP - 4096n, length: 4096, pageSize: 4096 }), "EOVERFLOW");
    device.free();
  });

  it("an IOVA that is no u64 (negative, past 2^64 - 1, fractional) is EINVAL; a DMA write past the top is EOVERFLOW", async () => {
    const device = makeDevice();
    await expectCode(() => device.startDmaLogging({ ranges: [{ iova: -4096, length: 4096 }], pageSize: 4096 }), "EINVAL");
    await expectCode(() => device.startDmaLogging({ ranges: [{ iova: TOP, length: 4096 }], pageSize: 4096 }), "EINVAL");
    await expectCode(() => device.dmaWrite(1.5, new Uint8Array(1)), "EINVAL");
    await expectCode(() => device.dmaWrite(TOP - 1n, new Uint8Array(2)), "EOVERFLOW");
    device.dmaWrite(TOP - 1n, new Uint8Array(1));
    device.free();
  });

  it("bigint and number IOVAs mark the same pages (property, fixed seed)", () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.integer({ min: 0, max: (1 << 20) - 1 }), fc.integer({ min: 1, max: 9000 })), { maxLength: 20 }), (writes) => {
        const a = makeDevice();
        const b = makeDevice();
        const base = 2n ** 52n;
        a.startDmaLogging({ ranges: [{ iova: Number(base), length: 1 << 20 }], pageSize: 4096 });
        b.startDmaLogging({ ranges: [{ iova: base, length: 2n ** 20n }], pageSize: 4096 });
        for (const [offset, length] of writes) {
          a.dmaWrite(Number(base) + offset, new Uint8Array(length));
          b.dmaWrite(base + BigInt(offset), new Uint8Array(length));
        }
        const ra = a.reportDmaLogging({ iova: Number(base), length: 1 << 20, pageSize: 4096 });
        const rb = b.reportDmaLogging({ iova: base, length: 2n ** 20n, pageSize: 4096n });
        expect(Buffer.from(rb).equals(Buffer.from(ra))).toBe(true);
        a.free();
        b.free();
      }),
      { seed: 0x64, numRuns: 30 },
    );
  });
});
