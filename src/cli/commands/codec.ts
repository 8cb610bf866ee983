// encode, decode, diff, apply, inspect, verify: snapshot files and streams.
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Command, Option } from "commander";
import { MigrationError } from "../../core/errors.js";
import { onInterruptCleanup } from "../../node/atomic-file.js";
import { decodeToFile, encodeFile, inspectStream } from "../../node/files.js";
import type { DecoderSummary } from "../../codec/decoder.js";
import type { EncoderSummary } from "../../codec/encoder.js";
import { tagName } from "../../format/constants.js";
import {
  errorJson,
  formatBytes,
  openOutput,
  openSource,
  parseSize,
  Progress,
  type ReaderFlags,
  readerLimitOptions,
  readerLimits,
  readerOptions,
  report,
  snapshotPath,
} from "../common.js";

interface EncodeFlags {
  output: string;
  base?: string;
  pageSize: string;
  maxRecord: string;
  checksum: "xxh3" | "crc32c";
  compress: "none" | "lz4";
  deviceId: string;
  config?: string;
  verify: boolean;
  force?: boolean;
  json?: boolean;
  quiet?: boolean;
}

interface DecodeFlags extends ReaderFlags {
  output: string;
  base?: string;
  force?: boolean;
  json?: boolean;
  quiet?: boolean;
}

function encodeOptions(command: Command): Command {
  return command
    .requiredOption("-o, --output <stream>", "output stream file, or - for stdout")
    .option("--page-size <bytes>", "page size, a power of two from 64 to 1M", "4096")
    .option("--max-record <bytes>", "largest record payload", "1M")
    .addOption(new Option("--checksum <algorithm>", "record checksum").choices(["xxh3", "crc32c"]).default("xxh3"))
    .addOption(new Option("--compress <codec>", "page compression: lz4 sends runs of raw pages LZ4-compressed when smaller (format 1.1)").choices(["none", "lz4"]).default("none"))
    .option("--device-id <id>", "device compatibility id the target must match", "")
    .option("--config <file>", "device config blob to carry in the stream")
    .option("--no-verify", "skip re-reading the written stream before it replaces the output")
    .option("-f, --force", "write binary data even to a terminal")
    .option("--json", "print the summary as JSON")
    .option("-q, --quiet", "print nothing but errors");
}

function decodeOptions(command: Command): Command {
  return readerOptions(command.requiredOption("-o, --output <snapshot>", "output snapshot file, or - for stdout"))
    .option("-f, --force", "write binary data even to a terminal")
    .option("--json", "print the summary as JSON")
    .option("-q, --quiet", "print nothing but errors");
}

/** Elapsed time, state throughput and this process's peak RSS, for --json reports. */
function resources(started: number, stateBytes: number): Record<string, number> {
  const elapsedMs = performance.now() - started;
  return {
    elapsedMs: Math.round(elapsedMs),
    throughputBytesPerSecond: Math.round(stateBytes / Math.max(elapsedMs / 1000, 1e-6)),
    maxRssBytes: peakRss(),
  };
}

/**
 * This process's peak resident set. On Linux getrusage's maxrss carries the parent's peak over
 * fork and exec (a CLI spawned by a large process would report the parent's), so the kernel's
 * per-process high-water mark (VmHWM) is read instead where it exists.
 */
function peakRss(): number {
  try {
    const match = /^VmHWM:\s+(\d+) kB$/m.exec(readFileSync("/proc/self/status", "utf8"));
    if (match) return Number(match[1]) * 1024;
  } catch {
    // not Linux: fall through
  }
  return process.resourceUsage().maxRSS * 1024;
}

async function runEncode(snapshot: string, flags: EncodeFlags): Promise<void> {
  const started = performance.now();
  const input = await snapshotPath(snapshot);
  const output = openOutput(flags.output, flags.force === true);
  const progress = new Progress("encode", flags);
  try {
    const summary = await encodeFile(input.path, (chunk) => output.write(chunk), {
      pageSize: parseSize(flags.pageSize),
      maxRecordPayload: parseSize(flags.maxRecord),
      checksum: flags.checksum,
      compress: flags.compress,
      deviceId: flags.deviceId,
      ...(flags.base !== undefined ? { base: flags.base } : {}),
      ...(flags.config !== undefined ? { config: readFileSync(flags.config) } : {}),
      onprogress: (done, total) => progress.update(done, total),
    });
    progress.done();
    if (flags.verify && output.tempPath !== undefined) {
      // The bytes on disk, not the ones in memory, are what a reader will get.
      const check = await inspectStream(openSource(output.tempPath), { maxStateSize: summary.stateBytes, maxRecordPayload: parseSize(flags.maxRecord) });
      if (check.problem) throw new MigrationError("EIO", `written stream failed verification: ${check.problem.message}`);
    }
    await output.commit();
    report({ ...encodeReport(summary), resources: resources(started, summary.stateBytes) }, encodeText(summary, flags.output), {
      ...flags,
      dataOnStdout: flags.output === "-",
    });
  } catch (error) {
    output.abort();
    throw error;
  } finally {
    progress.done();
    input.cleanup();
  }
}

async function runDecode(stream: string, flags: DecodeFlags): Promise<void> {
  const started = performance.now();
  const progress = new Progress("decode", flags);
  const toStdout = flags.output === "-";
  // Decoded data reaches stdout only after the stream verified: stage it in a temporary file.
  const staged = toStdout ? snapshotPathForOutput() : undefined;
  try {
    const summary = await decodeToFile(openSource(stream), staged?.path ?? flags.output, {
      ...(flags.base !== undefined ? { base: flags.base } : {}),
      ...(flags.deviceId !== undefined ? { deviceId: flags.deviceId } : {}),
      ...readerLimits(flags),
      onprogress: (bytes) => progress.update(bytes),
    });
    progress.done();
    if (staged) {
      const out = openOutput("-", flags.force === true);
      for await (const chunk of openSource(staged.path)) await out.write(chunk);
    }
    report({ ...decodeReport(summary), resources: resources(started, summary.header?.totalSize ?? 0) }, decodeText(summary, flags.output), {
      ...flags,
      dataOnStdout: toStdout,
    });
  } finally {
    progress.done();
    staged?.cleanup();
  }
}

/** A private temporary file for a decoded state bound for stdout (removed on interruption too). */
function snapshotPathForOutput(): { path: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), "migstream-"));
  return { path: join(dir, "decoded.snapshot"), cleanup: onInterruptCleanup(() => rmSync(dir, { recursive: true, force: true })) };
}

function encodeReport(s: EncoderSummary): Record<string, unknown> {
  return { ...s, ratio: s.stateBytes > 0 ? s.bytes / s.stateBytes : null };
}

function encodeText(s: EncoderSummary, output: string): string {
  const ratio = s.stateBytes > 0 ? ` (${((s.bytes / s.stateBytes) * 100).toFixed(1)}% of the state)` : "";
  return `encoded ${formatBytes(s.stateBytes)} into ${formatBytes(s.bytes)}${ratio} -> ${output === "-" ? "stdout" : output}: ${s.records} records, pages raw ${s.pages.raw}, lz4 ${s.pages.lz4}, zero ${s.pages.zero}, delta ${s.pages.delta}, unchanged ${s.pages.clean}`;
}

function decodeReport(s: DecoderSummary): Record<string, unknown> {
  const { header, ...rest } = s;
  return { ...rest, ...(header ? { header: headerJson(header) } : {}) };
}

function decodeText(s: DecoderSummary, output: string): string {
  return `decoded ${formatBytes(s.header?.totalSize ?? 0)} from ${formatBytes(s.bytes)} of stream -> ${output === "-" ? "stdout" : output}: verified`;
}

function headerJson(h: NonNullable<DecoderSummary["header"]>): Record<string, unknown> {
  return {
    version: `${h.major}.${h.minor}`,
    checksum: h.checksum,
    compression: h.compression,
    pageSize: h.pageSize,
    totalSize: h.totalSize,
    maxRecordPayload: h.maxRecordPayload,
    deviceId: h.deviceId,
    incremental: h.baseDigest !== undefined,
    ...(h.baseDigest !== undefined ? { baseDigest: h.baseDigest } : {}),
    regions: h.regions,
  };
}

/** LZ4 records: their payload bytes against the state bytes they cover. */
function compressedJson(summary: DecoderSummary): { records: number; bytes: number; stateBytes: number; ratio: number | null } {
  const pageSize = summary.header?.pageSize ?? 0;
  // Pages of LZ4 records are whole except a region's last one: pages x size is within a page.
  const stateBytes = summary.pages.lz4 * pageSize;
  return { records: summary.records.lz4, bytes: summary.compressedBytes, stateBytes, ratio: stateBytes > 0 ? summary.compressedBytes / stateBytes : null };
}

async function runInspect(stream: string, flags: { json?: boolean; maxRecord: string; maxState: string }): Promise<boolean> {
  const { summary, bytesByKind, problem } = await inspectStream(openSource(stream), readerLimits(flags));
  const h = summary.header;
  if (flags.json) {
    const value = {
      ...(h ? { header: headerJson(h) } : {}),
      records: summary.records,
      pages: summary.pages,
      bytes: { total: summary.bytes, ...bytesByKind },
      compressed: compressedJson(summary),
      rounds: summary.rounds,
      ratio: summary.ratio ?? null,
      valid: problem === undefined,
      ...(problem ? { problem: errorJson(problem) } : {}),
    };
    process.stdout.write(`${JSON.stringify(value, (_k, v: unknown) => (typeof v === "bigint" ? `0x${v.toString(16).padStart(16, "0")}` : v), 2)}\n`);
  } else {
    const lines: string[] = [];
    if (h) {
      lines.push(`format      ${h.major}.${h.minor}, checksum ${h.checksum}, compression ${h.compression}, page size ${h.pageSize}, max record ${formatBytes(h.maxRecordPayload)}`);
      lines.push(`device id   ${JSON.stringify(h.deviceId)}`);
      lines.push(`kind        ${h.baseDigest === undefined ? "full" : `incremental (base 0x${h.baseDigest.toString(16).padStart(16, "0")})`}`);
      lines.push(`state       ${formatBytes(h.totalSize)} in ${h.regions.length} region(s)`);
      for (const r of h.regions) lines.push(`  region    ${r.name.padEnd(16)} ${formatBytes(r.size)}`);
    }
    const r = summary.records;
    lines.push(`records     ${r.pages + r.lz4 + r.zero + r.delta + r.config + r.round + r.skipped + r.end} in ${formatBytes(summary.bytes)}`);
    lines.push(`  ${tagName(1).padEnd(9)} ${String(r.pages).padStart(8)} records ${String(summary.pages.raw).padStart(9)} pages ${formatBytes(bytesByKind.pages).padStart(11)}`);
    if (h?.compression === "lz4") {
      const c = compressedJson(summary);
      const ratio = c.ratio === null ? "" : `  (${(c.ratio * 100).toFixed(1)}% of ${formatBytes(c.stateBytes)})`;
      lines.push(`  ${tagName(4).padEnd(9)} ${String(r.lz4).padStart(8)} records ${String(summary.pages.lz4).padStart(9)} pages ${formatBytes(bytesByKind.lz4).padStart(11)}${ratio}`);
    }
    lines.push(`  ${tagName(2).padEnd(9)} ${String(r.zero).padStart(8)} records ${String(summary.pages.zero).padStart(9)} pages ${formatBytes(bytesByKind.zero).padStart(11)}`);
    lines.push(`  ${tagName(3).padEnd(9)} ${String(r.delta).padStart(8)} records ${String(summary.pages.delta).padStart(9)} pages ${formatBytes(bytesByKind.delta).padStart(11)}`);
    lines.push(`  config    ${String(r.config).padStart(8)}   round ${r.round}   skipped ${r.skipped}   end ${r.end}`);
    for (const round of summary.rounds) {
      lines.push(`  round ${String(round.round).padStart(3)}  ${round.pages} pages, ${formatBytes(round.bytes)}, ${formatBytes(round.dirtyBytes)} dirty left`);
    }
    if (summary.ratio !== undefined) lines.push(`ratio       ${(summary.ratio * 100).toFixed(2)}% of the state`);
    lines.push(problem ? `problem     ${problem.code}: ${problem.message}` : "valid       yes");
    process.stdout.write(`${lines.join("\n")}\n`);
  }
  if (problem) throw problem;
  return true;
}

export function registerCodecCommands(program: Command): void {
  encodeOptions(
    program
      .command("encode")
      .description("encode a state snapshot into a migration stream")
      .argument("<snapshot>", "snapshot file, or - for stdin")
      .option("--base <snapshot>", "previous snapshot: write an incremental stream against it"),
  )
    .addHelpText("after", "\nExamples:\n  migstream encode vm.state -o vm.mig\n  cat vm.state | migstream encode - -o - | ssh host migstream decode - -o vm.state")
    .action(runEncode);

  decodeOptions(
    program
      .command("decode")
      .description("decode a migration stream into a snapshot; refuses a stream that does not validate")
      .argument("<stream>", "stream file, or - for stdin")
      .option("--base <snapshot>", "the base snapshot an incremental stream was made against"),
  )
    .addHelpText("after", "\nExamples:\n  migstream decode vm.mig -o vm.state\n  migstream decode - -o vm.state < vm.mig")
    .action(runDecode);

  encodeOptions(
    program
      .command("diff")
      .description("write an incremental stream from <old> to <new> (pages that differ, XBZRLE-coded when smaller)")
      .argument("<old>", "base snapshot")
      .argument("<new>", "new snapshot, or - for stdin"),
  )
    .addHelpText("after", "\nExample:\n  migstream diff vm.v1.state vm.v2.state -o v1-to-v2.mig")
    .action((oldPath: string, newPath: string, flags: EncodeFlags) => runEncode(newPath, { ...flags, base: oldPath }));

  decodeOptions(
    program
      .command("apply")
      .description("apply an incremental stream to <base>, writing the new snapshot")
      .argument("<base>", "base snapshot")
      .argument("<stream>", "incremental stream file, or - for stdin"),
  )
    .addHelpText("after", "\nExample:\n  migstream apply vm.v1.state v1-to-v2.mig -o vm.v2.state")
    .action((base: string, stream: string, flags: DecodeFlags) => runDecode(stream, { ...flags, base }));

  readerLimitOptions(program.command("inspect"))
    .description("show a stream's header, regions, records by kind, rounds and ratio, and the first problem found")
    .argument("<stream>", "stream file, or - for stdin")
    .option("--json", "print as JSON")
    .addHelpText("after", "\nExample:\n  migstream inspect vm.mig --json")
    .action(async (stream: string, flags: { json?: boolean; maxRecord: string; maxState: string }) => {
      await runInspect(stream, flags);
    });

  readerOptions(program.command("verify"))
    .description("validate a stream completely without writing anything")
    .argument("<stream>", "stream file, or - for stdin")
    .option("--base <snapshot>", "check an incremental stream against its base")
    .option("--json", "print the result as JSON")
    .option("-q, --quiet", "print nothing but errors")
    .addHelpText("after", "\nExample:\n  migstream verify vm.mig && echo ok")
    .action(async (stream: string, flags: Omit<DecodeFlags, "output" | "force">) => {
      const summary = await decodeToFile(openSource(stream), undefined, {
        ...(flags.base !== undefined ? { base: flags.base } : {}),
        ...(flags.deviceId !== undefined ? { deviceId: flags.deviceId } : {}),
        ...readerLimits(flags),
      });
      report({ valid: true, ...decodeReport(summary) }, `valid: ${formatBytes(summary.bytes)} of stream for ${formatBytes(summary.header?.totalSize ?? 0)} of state`, flags);
    });
}
