// npm run -s bench [-- --json [file]] [-- --smoke] [-- --only kernels,codec,compression,live,emulator-memory,live-migration,cli,vfio-user,qemu,channels]
// Prints each path's throughput with its ratio to Buffer.copy of the same size measured in the
// same run, and to its pure-TS reference, and whether each target was met. --json prints the same
// rows as JSON only (npm's -s keeps npm's own banner off stdout), or with a file name writes the
// JSON there and prints the table; both also write bench/results/latest.json. --smoke runs tiny
// sizes only, to check the benchmarks still run.
import { mkdirSync, writeFileSync } from "node:fs";
import { cliBenchmarks } from "./cli.js";
import { codecBenchmarks } from "./codec.js";
import { compressionBenchmarks } from "./compression.js";
import { type BenchConfig, printTable, type Row, targetMet } from "./harness.js";
import { kernelBenchmarks } from "./kernels.js";
import { liveBenchmarks, liveMigrationBenchmarks } from "./live.js";
import { emulatorMemoryBenchmarks } from "./emulator-memory.js";
import { vfioUserBenchmarks } from "./vfio-user.js";
import { qemuBenchmarks } from "./qemu.js";

const args = process.argv.slice(2);
const config: BenchConfig = { smoke: args.includes("--smoke") };
const json = args.includes("--json");
const jsonArg = args[args.indexOf("--json") + 1];
const jsonFile = json && jsonArg !== undefined && !jsonArg.startsWith("--") ? jsonArg : undefined;
const onlyArg = args[args.indexOf("--only") + 1];
const only = args.includes("--only") && onlyArg ? new Set(onlyArg.split(",")) : undefined;
const want = (section: string): boolean => !only || only.has(section);

const KiB = 1024;
const MiB = 1024 * KiB;
const sections: { name: string; rows: Row[] }[] = [];

if (want("kernels")) {
  const sizes = config.smoke ? [4 * KiB, 64 * KiB] : [4 * KiB, 64 * KiB, MiB, 64 * MiB];
  sections.push({ name: "kernels", rows: await kernelBenchmarks(sizes, config) });
}
if (want("codec")) sections.push({ name: "codec", rows: await codecBenchmarks(config.smoke ? MiB : 64 * MiB, config) });
if (want("compression")) sections.push({ name: "compression", rows: await compressionBenchmarks(config.smoke ? MiB : 64 * MiB, config) });
if (want("cli")) sections.push({ name: "cli", rows: await cliBenchmarks(config.smoke ? 8 * MiB : 1024 * MiB, config) });
if (want("live")) sections.push({ name: "live", rows: await liveBenchmarks(config.smoke ? 4 * MiB : 256 * MiB, config) });
if (want("emulator-memory")) sections.push({ name: "emulator memory", rows: await emulatorMemoryBenchmarks(config.smoke ? 4 * MiB : 64 * MiB, config) });
if (want("qemu")) sections.push({ name: "qemu", rows: await qemuBenchmarks(config) });
if (want("jobs"))
  sections.push({ name: "jobs (worker pool)", rows: await (await import("./jobs.js")).jobsBenchmarks(config.smoke ? 8 * MiB : 1024 * MiB, config) });
if (want("live-migration")) sections.push({ name: "live migration", rows: await liveMigrationBenchmarks(config) });
if (want("channels")) sections.push({ name: "channels", rows: await (await import("./channels.js")).channelBenchmarks(config) });
if (want("vfio-user")) sections.push({ name: "vfio-user", rows: await vfioUserBenchmarks(config) });

if (json) {
  const rows = sections.flatMap((s) => s.rows).map((row) => ({ ...row, met: targetMet(row) ?? null }));
  const doc = { node: process.version, date: new Date().toISOString(), smoke: config.smoke, rows };
  const text = `${JSON.stringify(doc, null, 2)}\n`;
  mkdirSync(new URL("./results/", import.meta.url), { recursive: true });
  writeFileSync(new URL("./results/latest.json", import.meta.url), text);
  if (jsonFile) writeFileSync(jsonFile, text);
  else process.stdout.write(text);
}
if (!json || jsonFile) {
  console.log(`migstream benchmarks: node ${process.version}${config.smoke ? " (smoke: tiny sizes, numbers meaningless)" : ""}`);
  console.log("GB/s = 1e9 bytes of input per second (median); 'x copy' = over Buffer.copy of the same size, same run");
  for (const s of sections) printTable(s.name, s.rows);
}
