// The CLI on a large snapshot: encode and decode a file (1 GiB by default) through the real
// binary, reporting throughput and each process's own peak RSS (its --json report reads
// process.resourceUsage()). Streaming with positional I/O keeps RSS bounded whatever the size.
import { spawnSync } from "node:child_process";
import { closeSync, mkdtempSync, openSync, rmSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { type BenchConfig, randomBytes, type Row } from "./harness.js";

const cli = fileURLToPath(new URL("../dist/cli/main.js", import.meta.url));

function run(args: string[]): { durationMs: number; maxRssBytes: number; throughput: number } {
  const result = spawnSync(process.execPath, [cli, ...args, "--json"], { encoding: "utf8", maxBuffer: 1 << 24 });
  if (result.status !== 0) throw new Error(`migstream ${args.join(" ")} failed (${result.status}): ${result.stderr}`);
  return JSON.parse(result.stdout) as { durationMs: number; maxRssBytes: number; throughput: number };
}

export async function cliBenchmarks(size: number, _config: BenchConfig): Promise<Row[]> {
  const dir = mkdtempSync(join(tmpdir(), "migstream-bench-"));
  try {
    const snapshot = join(dir, "state.bin");
    // A realistic mix, written in 16 MiB pieces: mostly random pages, some zero stretches.
    const fd = openSync(snapshot, "w");
    const piece = new Uint8Array(16 << 20);
    for (let at = 0, i = 0; at < size; at += piece.length, i++) {
      randomBytes(piece, i + 1);
      if (i % 4 === 3) piece.fill(0, 0, piece.length / 2);
      writeSync(fd, piece, 0, Math.min(piece.length, size - at));
    }
    closeSync(fd);
    const encode = run(["encode", snapshot, "-o", join(dir, "state.mig"), "--no-verify"]);
    const decode = run(["decode", join(dir, "state.mig"), "-o", join(dir, "decoded.bin")]);
    const row = (task: string, r: typeof encode): Row => ({
      section: "cli",
      size,
      task,
      gbps: r.throughput / 1e9,
      vsCopy: Number.NaN,
      vs: { "peak RSS MiB": r.maxRssBytes / (1 << 20) },
      target: "peak RSS < 256 MiB",
    });
    return [row("migstream encode (whole process, file to file)", encode), row("migstream decode (whole process, file to file)", decode)];
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
