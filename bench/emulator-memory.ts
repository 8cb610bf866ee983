// Regions over the emulator's own memory ({ name, memory }) against regions in migstream's
// memory: a whole stop-copy stream read through a SavingSession into a reused buffer, the same
// content both ways, measured in the same run (alternating rounds: the box may be loaded). The
// emulator's bytes are staged into core memory in 256 KiB pieces, a copy the in-core regions do
// not need, which weighs more where the in-core encode is cheap (zero pages); so two contents:
// random pages, and a quarter of them zero. The target is >= 0.8x the in-core regions.
import { DeviceModel, type DeviceRegionSpec } from "../src/device/device-model.js";
import { SavingSession } from "../src/migration/saving-session.js";
import { type BenchConfig, randomBytes, type Row } from "./harness.js";

function content(size: number, zeroQuarter: boolean): Uint8Array {
  const bytes = randomBytes(new Uint8Array(size), 11);
  if (zeroQuarter) for (let at = 0; at < size; at += 4 * 4096) bytes.fill(0, at, Math.min(size, at + 4096));
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
 * and the spread (lowest, highest) of those ratios are reported. Buffer.copy (the "x copy"
 * column) is the median of runs before and after the rounds.
 */
export async function emulatorMemoryBenchmarks(size: number, config: BenchConfig): Promise<Row[]> {
  return [...(await compare(size, config, false)), ...(await compare(size, config, true))];
}

async function compare(size: number, config: BenchConfig, zeroQuarter: boolean): Promise<Row[]> {
  const bytes = content(size, zeroQuarter);
  const what = zeroQuarter ? "1/4 zero pages" : "random pages";
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
  const tasks: [string, () => unknown][] = models.map(([name, model]): [string, () => unknown] => [name, () => streamAll(model, out)]);
  const rounds = config.smoke ? 2 : 21;
  const times = new Map<string, number[]>(tasks.map(([name]) => [name, []]));
  const copies: number[] = [];
  const copy = (): void => {
    const start = performance.now();
    copyTarget.set(bytes);
    copies.push(performance.now() - start);
  };
  for (const [, run] of tasks) run(); // warm-up: staging and queue memory touched once
  // Buffer.copy runs before and after the rounds, not inside them: copying 64 MiB evicts the
  // caches, which would fall on whichever task came next.
  for (let i = 0; i < 5; i++) copy();
  for (let round = 0; round < rounds; round++) {
    for (let k = 0; k < tasks.length; k++) {
      const [name, run] = tasks[(k + round) % tasks.length]!;
      const start = performance.now();
      run();
      times.get(name)!.push(performance.now() - start);
    }
  }
  for (let i = 0; i < 5; i++) copy();
  for (const [, model] of models) model.free();
  const per = (name: string, against: string): number[] => times.get(name)!.map((t, i) => times.get(against)![i]! / t);
  const copyTime = median(copies);
  return models.map(([name]) => {
    const speed = size / (median(times.get(name)!) / 1000);
    const row: Row = {
      section: "emulator memory",
      size,
      task: `stop-copy stream, ${what}, ${name}`,
      gbps: speed / 1e9,
      vsCopy: copyTime / median(times.get(name)!),
    };
    if (name === "core regions") return row;
    const ratios = per(name, "core regions");
    return {
      ...row,
      vs: { "core regions": median(ratios), "lowest round": Math.min(...ratios), "highest round": Math.max(...ratios) },
      target: ">= 0.8x core regions",
    };
  });
}
