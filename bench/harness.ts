// Measurement helpers: tinybench runs, throughput from median latency, and ratios to a
// Buffer.copy of the same size measured in the same run (timings are never asserted anywhere).
import { Bench } from "tinybench";

export interface BenchConfig {
  smoke: boolean;
}

export interface Measured {
  task: string;
  /** Bytes per second, from the median latency. */
  bytesPerSecond: number;
  samples: number;
}

export interface Row {
  section: string;
  size: number;
  task: string;
  gbps: number;
  /** Throughput over Buffer.copy of the same size, same run. */
  vsCopy: number;
  /** Throughput over the comparison named in `vsName` (the pure-TS reference, or a library). */
  vs?: Record<string, number>;
  target?: string;
  /** Whether this run met the target (undefined: no target, or none that can be checked). */
  met?: boolean;
}

/**
 * Checks a row against its target, written as clauses joined by ", ": ">= 1.4x copy",
 * ">= 3x hash-wasm" (a comparison in `vs`), "peak RSS < 256 MiB", "cost <= 0.03 of a full round";
 * parenthesised notes ("(stretch 0.5x)") are not targets. Undefined when nothing can be checked.
 */
export function targetMet(row: Row): boolean | undefined {
  if (!row.target) return undefined;
  const clauses = row.target
    .replace(/\([^)]*\)/g, "")
    .split(",")
    .map((c) => c.trim())
    .filter((c) => c.length > 0);
  const results: boolean[] = [];
  const compare = (value: number | undefined, op: string, limit: number): boolean | undefined => {
    if (value === undefined || Number.isNaN(value)) return undefined;
    return op === ">=" ? value >= limit : op === ">" ? value > limit : op === "<=" ? value <= limit : value < limit;
  };
  for (const clause of clauses) {
    let m: RegExpExecArray | null;
    let result: boolean | undefined;
    if ((m = /^(>=|>|<=|<) ([\d.]+)x (.+)$/.exec(clause))) {
      const name = m[3]!;
      result = compare(name === "copy" ? row.vsCopy : name === "TS ref" ? row.vs?.["TS ref"] : row.vs?.[name], m[1]!, Number(m[2]));
    } else if ((m = /^peak RSS (<=|<) ([\d.]+) MiB$/.exec(clause))) {
      result = compare(row.vs?.["peak RSS MiB"], m[1]!, Number(m[2]));
    } else if ((m = /^cost (<=|<) ([\d.]+) of a full round$/.exec(clause))) {
      result = compare(row.vs?.["cost of full"], m[1]!, Number(m[2]));
    }
    if (result !== undefined) results.push(result);
  }
  return results.length === 0 ? undefined : results.every(Boolean);
}

/** Runs `tasks` (each processing `bytes` per call) plus a Buffer.copy baseline of `bytes`. */
export async function measure(bytes: number, tasks: Record<string, () => unknown>, config: BenchConfig): Promise<Map<string, Measured>> {
  const copySource = Buffer.alloc(bytes, 7);
  const copyTarget = Buffer.alloc(bytes);
  const large = bytes >= 16 << 20;
  const bench = new Bench({
    time: config.smoke ? 5 : large ? 1500 : 400,
    warmupTime: config.smoke ? 1 : large ? 300 : 100,
    iterations: config.smoke ? 1 : large ? 5 : 20,
    warmupIterations: config.smoke ? 1 : 3,
    throws: true,
  });
  // The baseline runs first and last; its median over both stands for "this run's memcpy".
  bench.add("Buffer.copy", () => copySource.copy(copyTarget));
  for (const [name, fn] of Object.entries(tasks)) bench.add(name, fn);
  bench.add("Buffer.copy (again)", () => copySource.copy(copyTarget));
  await bench.run();
  const results = new Map<string, Measured>();
  for (const task of bench.tasks) {
    const result = task.result;
    if (result.state !== "completed") throw new Error(`benchmark task ${task.name} did not complete (${result.state})`);
    const seconds = result.latency.p50 / 1000;
    results.set(task.name, { task: task.name, bytesPerSecond: bytes / Math.max(seconds, 1e-9), samples: result.latency.samplesCount ?? 0 });
  }
  const a = results.get("Buffer.copy")!;
  const b = results.get("Buffer.copy (again)")!;
  results.set("Buffer.copy", { ...a, bytesPerSecond: (a.bytesPerSecond + b.bytesPerSecond) / 2 });
  results.delete("Buffer.copy (again)");
  return results;
}

export function ratio(results: Map<string, Measured>, task: string, against: string): number {
  return results.get(task)!.bytesPerSecond / results.get(against)!.bytesPerSecond;
}

export function sizeName(bytes: number): string {
  if (bytes >= 1 << 30) return `${bytes / (1 << 30)} GiB`;
  if (bytes >= 1 << 20) return `${bytes / (1 << 20)} MiB`;
  if (bytes >= 1 << 10) return `${bytes / (1 << 10)} KiB`;
  return `${bytes} B`;
}

export function randomBytes(into: Uint8Array, seed = 1): Uint8Array {
  // xorshift32: fast, reproducible, incompressible enough for codecs.
  let x = seed >>> 0 || 1;
  const words = new Uint32Array(into.buffer, into.byteOffset, into.length >>> 2);
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x >>> 0;
  }
  for (let i = words.length * 4; i < into.length; i++) into[i] = i * 31;
  return into;
}

export function printTable(title: string, rows: Row[]): void {
  console.log(`\n${title}`);
  console.log(`${"task".padEnd(54)} ${"size".padStart(8)} ${"GB/s".padStart(8)} ${"x copy".padStart(8)}  comparisons${" ".repeat(14)}target (met?)`);
  for (const row of rows) {
    const vs = Object.entries(row.vs ?? {})
      .map(([name, r]) => `${r.toFixed(2)}x ${name}`)
      .join(", ");
    console.log(
      `${row.task.padEnd(54)} ${sizeName(row.size).padStart(8)} ${row.gbps.toFixed(2).padStart(8)} ${(Number.isNaN(row.vsCopy) ? "-" : row.vsCopy.toFixed(2)).padStart(8)}  ${vs.padEnd(24)} ${row.target ?? ""}${row.target ? metLabel(targetMet(row)) : ""}`,
    );
  }
}

function metLabel(met: boolean | undefined): string {
  return met === undefined ? "" : met ? "  [met]" : "  [NOT MET]";
}
