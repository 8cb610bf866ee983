// Migrations over several channels: TLS (pre-shared keys) send/receive of a snapshot between two
// processes on this machine, --channels 2 against --channels 1 (runs alternate, so both see the
// same machine). Both ends run on the same cores here, so this measures what striping costs or
// buys when the CPU, not the link, is the limit.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { BenchConfig, Row } from "./harness.js";
import { check, exited, listening, median, spread, writeSnapshot } from "./live.js";

const cli = fileURLToPath(new URL("../dist/cli/main.js", import.meta.url));
const MiB = 1 << 20;

/** ms from starting the sender to its exit (the OK) for one TLS-PSK transfer over `channels`. */
async function transfer(snapshot: string, output: string, psk: string, channels: number): Promise<number> {
  const tls = ["--tls-psk", psk, "--channels", String(channels)];
  // Every run writes a new file, as the first does: replacing the last run's 512 MiB output
  // would free its blocks inside the timed commit, a cost of the bench's reuse, of varying size.
  rmSync(output, { force: true });
  const receiver = await listening([cli, "receive", "--listen", "0", "-o", output, "-f", ...tls], /listening on [^\s]+:(\d+)/);
  const started = performance.now();
  const sent = await exited(spawn(process.execPath, [cli, "send", snapshot, "--to", String(receiver.port), ...tls], { stdio: ["ignore", "pipe", "pipe"] }));
  const ms = performance.now() - started;
  check(`migstream send --channels ${channels}`, sent);
  check(`migstream receive --channels ${channels}`, await receiver.done);
  return ms;
}

export async function channelBenchmarks(config: BenchConfig): Promise<Row[]> {
  const section = "channels";
  const size = config.smoke ? 8 * MiB : 512 * MiB;
  const runs = config.smoke ? 1 : 5;
  const dir = mkdtempSync(join(tmpdir(), "migstream-bench-channels-"));
  try {
    const snapshot = join(dir, "state.bin");
    const psk = join(dir, "keys.psk");
    writeSnapshot(snapshot, size);
    writeFileSync(psk, `migstream:${"5c".repeat(32)}\n`);
    const one: number[] = [];
    const two: number[] = [];
    // A round first, not counted: the first runs touch the page cache and file blocks afresh.
    if (!config.smoke) {
      await transfer(snapshot, join(dir, "out.bin"), psk, 1);
      await transfer(snapshot, join(dir, "out.bin"), psk, 2);
    }
    for (let i = 0; i < runs; i++) {
      one.push(await transfer(snapshot, join(dir, "out.bin"), psk, 1));
      two.push(await transfer(snapshot, join(dir, "out.bin"), psk, 2));
    }
    const oneBps = size / (median(one) / 1000);
    const twoBps = size / (median(two) / 1000);
    return [
      {
        section,
        size,
        task: `TLS-PSK send/receive --channels 2 (median of ${runs}, ${spread(two)})`,
        gbps: twoBps / 1e9,
        vsCopy: Number.NaN,
        vs: { "--channels 1": twoBps / oneBps },
        target: ">= 1.0x --channels 1",
      },
      { section, size, task: `TLS-PSK send/receive --channels 1 (median of ${runs}, ${spread(one)})`, gbps: oneBps / 1e9, vsCopy: Number.NaN },
    ];
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
