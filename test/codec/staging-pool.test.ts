// The staging pool keeps swapped-out blocks for the next migration, but never at the cost of
// an allocation: when core memory cannot grow, kept blocks are freed first.
import { expect, test } from "vitest";
import { CoreBuffer } from "../../src/core/buffer.js";
import { core } from "../../src/core/instance.js";
import { stagingPool } from "../../src/codec/staging-pool.js";

test("a kept block is taken again for the same size, a fresh one otherwise", () => {
  stagingPool.clear();
  const block = new CoreBuffer(3 * 65536);
  const ptr = block.ptr;
  stagingPool.give(block);
  expect(stagingPool.keptBytes).toBe(3 * 65536);
  const other = stagingPool.take(65536);
  expect(other.pooled).toBe(false);
  const again = stagingPool.take(3 * 65536);
  expect(again).toMatchObject({ pooled: true, zeroed: false });
  expect(again.buffer.ptr).toBe(ptr);
  expect(stagingPool.keptBytes).toBe(0);
  other.buffer.free();
  again.buffer.free();
});

test("kept blocks are freed when memory would otherwise run out", () => {
  stagingPool.clear();
  const c = core();
  // 1.5 GiB kept (never touched: no RSS), then 3 GiB asked for: only fits in 4 GiB of Wasm
  // memory once the kept block is given back.
  const kept = new CoreBuffer(1.5 * 2 ** 30);
  stagingPool.give(kept);
  const big = new CoreBuffer(3 * 2 ** 30);
  expect(kept.alive).toBe(false);
  expect(stagingPool.keptBytes).toBe(0);
  big.free();
  expect(c.allocatedBytes).toBeLessThan(2 ** 30);
});

test("reserveStaging prepares touched blocks that the next resume of regions that size stages into", async () => {
  const { reserveStaging } = await import("../../src/codec/staging-pool.js");
  const { encodeSnapshot } = await import("../../src/codec/snapshot.js");
  const { MigrationDevice } = await import("../../src/migration/v2/migration-device.js");
  const { migrateIn } = await import("../../src/migration/precopy.js");
  stagingPool.clear();
  const regions = [
    { name: "regs", size: 4096 },
    { name: "mem", size: 40 * 4096 },
  ];
  reserveStaging([...regions.map((r) => r.size), 0]);
  expect(stagingPool.keptBytes).toBe(41 * 4096);
  const device = new MigrationDevice({ regions, deviceId: "reserve" });
  const state = new Uint8Array(41 * 4096).map((_, i) => (i * 7) & 255);
  await migrateIn(device, [encodeSnapshot(state, { regions, deviceId: "reserve" })]);
  expect(device.model.snapshot()).toEqual(state);
  // Both reserved blocks were taken. The device's own blocks were never made (nothing used its
  // regions before the state was installed), so nothing came back in their place.
  expect(stagingPool.keptBytes).toBe(0);
  // A second migration into the same device gives the installed blocks back.
  await migrateIn(device, [
    encodeSnapshot(
      state.map((b) => b ^ 1),
      { regions, deviceId: "reserve" },
    ),
  ]);
  expect(stagingPool.keptBytes).toBe(41 * 4096);
  device.free();
  stagingPool.clear();
});
