// Pre-copy round cost with explicit dirty tracking: a round where 1% of the pages are dirty
// against a full round, on one device (target: at most 3% of a full round's cost).
import { StreamEncoder } from "../src/codec/encoder.js";
import { allocate } from "../src/core/buffer.js";
import { core } from "../src/core/instance.js";
import { DeviceModel } from "../src/device/device-model.js";
import { type BenchConfig, measure, randomBytes, type Row } from "./harness.js";

export async function liveBenchmarks(size: number, config: BenchConfig): Promise<Row[]> {
  const pageSize = 4096;
  const device = new DeviceModel({ regions: [{ name: "ram", size }], pageSize, tracking: "explicit" });
  randomBytes(device.view(0), 7);
  const pages = Math.ceil(size / pageSize);
  // 1% of the pages, spread out, marked the way a workload's writes mark them.
  const dirty = allocate(Math.ceil(pages / 8));
  const step = 100;
  for (let p = 0; p < pages; p += step) core().exports.bitmap_set_range(dirty.ptr, p, 1);
  const encoder = new StreamEncoder({ regions: device.layout, pageSize }, () => undefined);

  const results = await measure(
    size,
    {
      "full round (every page)": () => encoder.writePages(0, 0, device.view(0)),
      "round with 1% of pages dirty (explicit tracking)": () => encoder.writePages(0, 0, device.view(0), { dirty: dirty.bytes }),
    },
    config,
  );
  encoder.abort();
  dirty.free();
  device.free();
  const full = results.get("full round (every page)")!.bytesPerSecond;
  const sparse = results.get("round with 1% of pages dirty (explicit tracking)")!.bytesPerSecond;
  const copy = results.get("Buffer.copy")!.bytesPerSecond;
  // Throughputs are per device byte: cost ratio = full / sparse.
  return [
    { section: "live", size, task: "full round (every page)", gbps: full / 1e9, vsCopy: full / copy },
    {
      section: "live",
      size,
      task: "round with 1% of pages dirty (explicit tracking)",
      gbps: sparse / 1e9,
      vsCopy: sparse / copy,
      vs: { "cost of full": full / sparse },
      target: "cost <= 0.03 of a full round",
    },
  ];
}
