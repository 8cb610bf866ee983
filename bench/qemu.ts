// QEMU streams: `migstream verify` and `migstream decode` of the stream of a guest (1 GiB: 512 MiB
// random, the rest zero) against QEMU 7.2 loading the same file with -incoming, measured in the
// same run (the file warm in the page cache for both). QEMU's time runs from migrate-incoming to
// `completed` (its start-up excluded); migstream's is the command's own durationMs (Node's
// start-up excluded). Skipped, with a row saying so, when qemu-system-x86_64 is absent.
import { spawnSync } from "node:child_process";
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { allocate } from "../src/core/buffer.js";
import { qemuRamRunReference } from "../src/core/reference/qemu-ram.js";
import { RamKernel } from "../src/qemu/ram-kernel.js";
import { QemuStreamWriter } from "../src/qemu/writer.js";
import { qemuAvailable, sleep, startVm } from "../test/qemu/driver.js";
import { type BenchConfig, measure, randomBytes, ratio, type Row } from "./harness.js";

const cli = fileURLToPath(new URL("../dist/cli/main.js", import.meta.url));
const MiB = 1 << 20;

function migstream(args: string[]): { durationMs: number; maxRssBytes: number } {
  const result = spawnSync(process.execPath, [cli, ...args, "--json"], { encoding: "utf8", maxBuffer: 1 << 24 });
  if (result.status !== 0) throw new Error(`migstream ${args.join(" ")} failed (${result.status}): ${result.stderr}`);
  return JSON.parse(result.stdout) as { durationMs: number; maxRssBytes: number };
}

/** QEMU loading `stream` (-incoming defer, then migrate-incoming): milliseconds to `completed`. */
async function qemuLoad(dir: string, stream: string, memMiB: number): Promise<number> {
  const vm = await startVm({ dir, memMiB, incoming: "defer" }, "bench-load");
  try {
    const started = performance.now();
    await vm.qmp("migrate-incoming", { uri: `exec:cat ${stream}` });
    for (;;) {
      const info = (await vm.qmp("query-migrate")) as { status?: string };
      if (info.status === "completed") return performance.now() - started;
      if (info.status === "failed") throw new Error(`QEMU failed to load ${stream}: ${vm.stderr}`);
      await sleep(2);
    }
  } finally {
    await vm.quit();
  }
}

const median = (values: number[]): number => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;

/**
 * The RAM page loop alone, in process (no QEMU needed): one RAM section of `size` bytes of guest
 * memory (half random pages, half zero pages) framed by the writer, parsed and applied into
 * memory by the Wasm kernel, and by its pure-TS twin.
 */
async function pageLoopRows(size: number, config: BenchConfig): Promise<Row[]> {
  const ram = randomBytes(new Uint8Array(size), 11);
  for (let p = 0; p < size; p += 8192) ram.fill(0, p, p + 4096);
  const blocks = [{ name: "pc.ram", size }];
  const parts: Uint8Array[] = [];
  const writer = new QemuStreamWriter(
    { prologue: Uint8Array.of(0x51, 0x45, 0x56, 0x4d, 0, 0, 0, 3), ramSection: { id: 2, instance: 0, version: 4 }, blocks, tail: Uint8Array.of(0) },
    (view) => parts.push(view.slice()),
  );
  writer.write(ram);
  writer.end();
  // The PART section's records, from its first record to its EOS: after the prologue and START.
  const stream = Buffer.concat(parts);
  const first = stream.indexOf(Buffer.from("pc.ram"), 40) - 9;
  const records = stream.subarray(first, stream.length - 1 - 5 - 5 - 8 - 5);
  const input = allocate(records.length);
  input.bytes.set(records);
  const kernel = new RamKernel(blocks, { kind: "memory" }, 4096);
  const check = new RamKernel(blocks, { kind: "check" }, 4096);
  const memory = new Uint8Array(size);
  const name = new TextEncoder().encode("pc.ram");
  const results = await measure(
    size,
    {
      "wasm apply": () => {
        const r = kernel.run(input.ptr, records.length);
        if (r.status !== 1) throw new Error(`page loop stopped with ${r.status}`);
      },
      "wasm check": () => check.run(input.ptr, records.length),
      "TS reference apply": () => qemuRamRunReference(records, [{ name, size, memory }], { last: -1, normal: 0, zero: 0, xbzrle: 0 }),
    },
    config,
  );
  const row = (task: string, key: string, target?: string): Row => ({
    section: "qemu",
    size,
    task,
    gbps: results.get(key)!.bytesPerSecond / 1e9,
    vsCopy: ratio(results, key, "Buffer.copy"),
    vs: { "TS ref": ratio(results, key, "TS reference apply") },
    ...(target ? { target } : {}),
  });
  kernel.release();
  check.release();
  // Applying is a page copy per record, as in the TS twin (TypedArray.set): memory-bound both
  // ways, so no ratio target; checking (verify) touches only the record headers.
  return [
    row("QEMU RAM page loop, wasm (parse + apply into memory)", "wasm apply"),
    row("QEMU RAM page loop, wasm (parse + check only)", "wasm check", ">= 5x TS ref"),
  ];
}

export async function qemuBenchmarks(config: BenchConfig): Promise<Row[]> {
  const loop = await pageLoopRows(config.smoke ? MiB : 64 * MiB, config);
  return [...loop, ...(await qemuAgainstQemu(config))];
}

async function qemuAgainstQemu(config: BenchConfig): Promise<Row[]> {
  const memMiB = config.smoke ? 16 : 1024;
  const randomMiB = memMiB / 2;
  const task = (what: string) => `${what}, QEMU stream of a ${memMiB} MiB guest`;
  if (!qemuAvailable()) {
    return [{ section: "qemu", size: memMiB * MiB, task: task("skipped: qemu-system-x86_64 not installed"), gbps: Number.NaN, vsCopy: Number.NaN }];
  }
  const dir = mkdtempSync(join(tmpdir(), "migstream-bench-qemu-"));
  try {
    // The guest: paused, random bytes from 256 MiB (1 MiB for the smoke run) loaded by QEMU.
    const blob = join(dir, "random.bin");
    const fd = openSync(blob, "w");
    const piece = new Uint8Array(16 * MiB);
    for (let at = 0, i = 0; at < randomMiB * MiB; at += piece.length, i++) {
      randomBytes(piece, i + 7);
      writeSync(fd, piece, 0, Math.min(piece.length, randomMiB * MiB - at));
    }
    closeSync(fd);
    const stream = join(dir, "guest.qemu");
    const addr = config.smoke ? MiB : 256 * MiB;
    const vm = await startVm({ dir, memMiB, paused: true, loader: { file: blob, addr } }, "bench-source");
    try {
      await vm.migrateTo(stream);
    } finally {
      await vm.quit();
    }
    rmSync(blob);
    readFileSync(stream); // warm the page cache for everyone
    const runs = config.smoke ? 1 : 3;
    const qemu: number[] = [];
    const verify: Array<{ durationMs: number; maxRssBytes: number }> = [];
    const decode: Array<{ durationMs: number; maxRssBytes: number }> = [];
    for (let i = 0; i < runs; i++) {
      qemu.push(await qemuLoad(dir, stream, memMiB));
      verify.push(migstream(["verify", stream]));
      decode.push(migstream(["decode", stream, "-o", join(dir, "guest.ram"), "-f"]));
    }
    const q = median(qemu);
    const row = (what: string, results: typeof verify, target: string): Row => {
      const ms = median(results.map((r) => r.durationMs));
      return {
        section: "qemu",
        size: memMiB * MiB,
        task: task(what),
        gbps: (memMiB * MiB) / (ms / 1000) / 1e9,
        vsCopy: Number.NaN,
        vs: {
          "QEMU load": q / ms,
          "peak RSS MiB": Math.max(...results.map((r) => r.maxRssBytes)) / MiB,
        },
        target,
      };
    };
    const spread = (values: number[]) => `${Math.min(...values).toFixed(0)}-${Math.max(...values).toFixed(0)} ms`;
    console.error(
      `qemu bench (${runs} runs): QEMU load ${spread(qemu)}, verify ${spread(verify.map((r) => r.durationMs))}, decode ${spread(decode.map((r) => r.durationMs))}`,
    );
    return [
      row("migstream verify", verify, ">= 1.0x QEMU load, peak RSS < 256 MiB"),
      // decode <= 2x QEMU's load time: its speed >= 0.5x QEMU's.
      row("migstream decode to a file", decode, ">= 0.5x QEMU load, peak RSS < 256 MiB"),
    ];
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
