// Regions over the emulator's own memory ({ name, memory }) against regions in migstream's
// memory: a whole stop-copy stream read through a SavingSession into a reused buffer, the same
// content both ways, measured in the same run (alternating rounds: the box may be loaded). The emulator's bytes are staged into core memory
// through bounded windows by the encoder; the target is >= 0.8x the in-core regions.
import { DeviceModel, type DeviceRegionSpec } from "../src/device/device-model.js";
import { SavingSession } from "../src/migration/saving-session.js";
import { type BenchConfig, randomBytes, type Row } from "./harness.js";

function content(size: number): Uint8Array {
  const bytes = randomBytes(new Uint8Array(size), 11);
  // A quarter of the pages zero, as in a real device's state.
  for (let at = 0; at < size; at += 4 * 4096) bytes.fill(0, at, Math.min(size, at + 4096));
  return bytes;
}

function streamAll(model: DeviceModel, out: Uint8Array): number {
  const session = new SavingSession(model, { deviceId: "bench", precopy: false });
  session.stop(undefined);
  let bytes = 0;
  for (let n = session.readInto(out); n !== null; n = session.readInto(out)) bytes += n;
  session.close();
  return bytes;
}

function median(values: number[]): number {
  const sorted = [...values].sort((x, y) => x - y);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/**
 * Rounds of one run of each task, in an order rotated every round, so that load from other
 * processes falls on all of them alike; each ratio is taken within its round, and the median
 * and the spread (lowest, highest) of those ratios are reported.
 */
export async function emulatorMemoryBenchmarks(size: number, config: BenchConfig): Promise<Row[]> {
  const bytes = content(size);
  const wasm = new WebAssembly.Memory({ initial: Math.ceil(size / 65536) + 1 });
  const inWasm = new Uint8Array(wasm.buffer, 0, size);
  inWasm.set(bytes);
  const models: [string, DeviceModel][] = [
    ["core regions", new DeviceModel({ regions: [{ name: "ram", size }] })],
    ["emulator ArrayBuffer", new DeviceModel({ regions: [{ name: "ram", memory: bytes }] satisfies DeviceRegionSpec[] })],
    ["emulator WebAssembly.Memory", new DeviceModel({ regions: [{ name: "ram", memory: inWasm }] })],
  ];
  models[0]![1].view(0).set(bytes);
  const out = new Uint8Array(1 << 20);
  const copyTarget = new Uint8Array(size);
  const tasks: [string, () => unknown][] = [
    ["Buffer.copy", () => copyTarget.set(bytes)],
    ...models.map(([name, model]): [string, () => unknown] => [name, () => streamAll(model, out)]),
  ];
  const rounds = config.smoke ? 2 : 21;
  const times = new Map<string, number[]>(tasks.map(([name]) => [name, []]));
  for (const [, run] of tasks) run(); // warm-up: staging and queue memory touched once
  for (let round = 0; round < rounds; round++) {
    for (let k = 0; k < tasks.length; k++) {
      const [name, run] = tasks[(k + round) % tasks.length]!;
      const start = performance.now();
      run();
      times.get(name)!.push(performance.now() - start);
    }
  }
  for (const [, model] of models) model.free();
  const per = (name: string, against: string): number[] => times.get(name)!.map((t, i) => times.get(against)![i]! / t);
  return models.map(([name]) => {
    const speed = size / (median(times.get(name)!) / 1000);
    const row: Row = { section: "emulator memory", size, task: `stop-copy stream, ${name}`, gbps: speed / 1e9, vsCopy: median(per(name, "Buffer.copy")) };
    if (name === "core regions") return row;
    const ratios = per(name, "core regions");
    return {
      ...row,
      vs: { "core regions": median(ratios), "lowest round": Math.min(...ratios), "highest round": Math.max(...ratios) },
      target: ">= 0.8x core regions",
    };
  });
}
