// DMA dirty logging (VFIO_DEVICE_FEATURE_DMA_LOGGING_START / _STOP / _REPORT): one test per
// rule the kernel applies.
import { describe, expect, it } from "vitest";
import { DMA_LOG_MAX_RANGES } from "../../src/device/dma-logging.js";
import { expectCode, makeDevice } from "./helpers.js";

const KiB4 = 4096;
const bit = (bitmap: Uint8Array, n: number): boolean => (bitmap[n >>> 3]! & (1 << (n & 7))) !== 0;
const setBits = (bitmap: Uint8Array): number[] => {
  const out: number[] = [];
  for (let n = 0; n < bitmap.length * 8; n++) if (bit(bitmap, n)) out.push(n);
  return out;
};

describe("DMA logging", () => {
  it("'only one logging session at a time': a second start is refused until stop", async () => {
    const device = makeDevice();
    device.startDmaLogging({ ranges: [{ iova: 0, length: 16 * KiB4 }], pageSize: KiB4 });
    await expectCode(() => device.startDmaLogging({ ranges: [{ iova: 1 << 20, length: KiB4 }], pageSize: KiB4 }), "EINVAL");
    device.stopDmaLogging();
    device.startDmaLogging({ ranges: [{ iova: 1 << 20, length: KiB4 }], pageSize: KiB4 });
    device.free();
  });

  it("'num_ranges > LOG_MAX_RANGES: E2BIG'", async () => {
    const device = makeDevice();
    const ranges = Array.from({ length: DMA_LOG_MAX_RANGES + 1 }, (_, i) => ({ iova: i * 2 * KiB4, length: KiB4 }));
    await expectCode(() => device.startDmaLogging({ ranges, pageSize: KiB4 }), "E2BIG");
    device.startDmaLogging({ ranges: ranges.slice(0, DMA_LOG_MAX_RANGES), pageSize: KiB4 });
    device.free();
  });

  it("'overlapping ranges: EINVAL' (and empty, unaligned or no ranges, or a page size that is not a power of two)", async () => {
    const device = makeDevice();
    const bad = [
      {
        ranges: [
          { iova: 0, length: 4 * KiB4 },
          { iova: 3 * KiB4, length: 2 * KiB4 },
        ],
        pageSize: KiB4,
      },
      {
        ranges: [
          { iova: 8 * KiB4, length: KiB4 },
          { iova: 0, length: 9 * KiB4 },
        ],
        pageSize: KiB4,
      },
      { ranges: [], pageSize: KiB4 },
      { ranges: [{ iova: 0, length: 0 }], pageSize: KiB4 },
      { ranges: [{ iova: 100, length: KiB4 }], pageSize: KiB4 },
      { ranges: [{ iova: 0, length: KiB4 }], pageSize: 0 },
      { ranges: [{ iova: 0, length: KiB4 }], pageSize: 3000 },
    ];
    for (const request of bad) await expectCode(() => device.startDmaLogging(request), "EINVAL");
    expect(device.model.dma.active).toBe(false);
    // Touching is not overlapping.
    device.startDmaLogging({
      ranges: [
        { iova: 0, length: 4 * KiB4 },
        { iova: 4 * KiB4, length: 4 * KiB4 },
      ],
      pageSize: KiB4,
    });
    device.free();
  });

  it("'page_size is an input that hints at the tracking granularity ... the driver sets it to the size used'", () => {
    const device = makeDevice({ dmaLogging: { minPageSize: 4096, maxPageSize: 1 << 21 } });
    expect(device.startDmaLogging({ ranges: [{ iova: 0, length: 1 << 22 }], pageSize: 1024 })).toEqual({ pageSize: 4096 });
    device.stopDmaLogging();
    expect(device.startDmaLogging({ ranges: [{ iova: 0, length: 1 << 22 }], pageSize: 1 << 22 })).toEqual({ pageSize: 1 << 21 });
    device.stopDmaLogging();
    expect(device.startDmaLogging({ ranges: [{ iova: 0, length: 1 << 22 }], pageSize: 1 << 16 })).toEqual({ pageSize: 1 << 16 });
    device.free();
  });

  it("'the report reads and clears': pages written by DMA are reported once", () => {
    const device = makeDevice();
    device.startDmaLogging({ ranges: [{ iova: 1 << 20, length: 64 * KiB4 }], pageSize: KiB4 });
    const report = () => device.reportDmaLogging({ iova: 1 << 20, length: 64 * KiB4, pageSize: KiB4 });
    expect(setBits(report())).toEqual([]);
    device.dmaWrite((1 << 20) + 5 * KiB4 + 10, new Uint8Array(KiB4)); // pages 5 and 6
    device.dmaWrite((1 << 20) + 63 * KiB4, new Uint8Array(1));
    device.dmaWrite(0, new Uint8Array(100)); // outside the tracked range: not recorded
    const first = report();
    expect(first).toHaveLength(8);
    expect(setBits(first)).toEqual([5, 6, 63]);
    expect(setBits(report())).toEqual([]);
    device.free();
  });

  it("'the report only ever sets bits' in the caller's bitmap", () => {
    const device = makeDevice();
    device.startDmaLogging({ ranges: [{ iova: 0, length: 16 * KiB4 }], pageSize: KiB4 });
    device.dmaWrite(2 * KiB4, new Uint8Array(1));
    const bitmap = new Uint8Array(8);
    bitmap[0] = 0b1000_0001;
    device.reportDmaLogging({ iova: 0, length: 16 * KiB4, pageSize: KiB4, bitmap });
    expect(setBits(bitmap)).toEqual([0, 2, 7]);
    device.free();
  });

  it("reports at another page size than the tracking one: wider pages OR, narrower pages widen", () => {
    const device = makeDevice();
    device.startDmaLogging({ ranges: [{ iova: 0, length: 64 * KiB4 }], pageSize: KiB4 });
    device.dmaWrite(9 * KiB4, new Uint8Array(1));
    expect(setBits(device.reportDmaLogging({ iova: 0, length: 64 * KiB4, pageSize: 8 * KiB4 }))).toEqual([1]);
    device.stopDmaLogging();
    // Tracked at 16 KiB: a report at 4 KiB replicates the bit over the four pages it covers.
    device.startDmaLogging({ ranges: [{ iova: 0, length: 64 * KiB4 }], pageSize: 4 * KiB4 });
    device.dmaWrite(9 * KiB4, new Uint8Array(1));
    expect(setBits(device.reportDmaLogging({ iova: 8 * KiB4, length: 8 * KiB4, pageSize: KiB4 }))).toEqual([0, 1, 2, 3]);
    device.free();
  });

  it("a narrower report that starts inside a tracked page, in a range above 0, marks only the report pages it shares", () => {
    const device = makeDevice();
    const at = 256 * KiB4;
    // Tracked at 16 KiB from 1 MiB: tracked page 2 covers [at + 8, at + 12) x 4 KiB.
    device.startDmaLogging({ ranges: [{ iova: at, length: 64 * KiB4 }], pageSize: 4 * KiB4 });
    device.dmaWrite(at + 9 * KiB4, new Uint8Array(1));
    device.dmaWrite(at + 13 * KiB4, new Uint8Array(1));
    // [at + 10, at + 18) x 4 KiB: half of tracked page 2, all of page 3, half of page 4 (clean).
    expect(setBits(device.reportDmaLogging({ iova: at + 10 * KiB4, length: 8 * KiB4, pageSize: KiB4 }))).toEqual([0, 1, 2, 3, 4, 5]);
    device.free();
  });

  it("a report outside the tracked ranges, unaligned, or with no session is EINVAL", async () => {
    const device = makeDevice();
    await expectCode(() => device.reportDmaLogging({ iova: 0, length: KiB4, pageSize: KiB4 }), "EINVAL");
    device.startDmaLogging({ ranges: [{ iova: 0, length: 16 * KiB4 }], pageSize: KiB4 });
    await expectCode(() => device.reportDmaLogging({ iova: 8 * KiB4, length: 16 * KiB4, pageSize: KiB4 }), "EINVAL");
    await expectCode(() => device.reportDmaLogging({ iova: 100, length: KiB4, pageSize: KiB4 }), "EINVAL");
    await expectCode(() => device.reportDmaLogging({ iova: 0, length: KiB4, pageSize: 0 }), "EINVAL");
    device.stopDmaLogging();
    await expectCode(() => device.reportDmaLogging({ iova: 0, length: KiB4, pageSize: KiB4 }), "EINVAL");
    device.free();
  });

  it("a stopped device does no DMA: dmaWrite is refused outside the running states", async () => {
    const written: number[] = [];
    const device = makeDevice({ guestMemory: (iova) => void written.push(Number(iova)) });
    device.dmaWrite(42, new Uint8Array(1));
    await device.setState("STOP");
    await expectCode(() => device.dmaWrite(42, new Uint8Array(1)), "EINVAL");
    expect(written).toEqual([42]);
    device.free();
  });
});
