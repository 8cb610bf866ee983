// encode, decode, diff, apply, inspect, verify: snapshot files and streams.
import { closeSync, openSync, readFileSync, readSync, statSync } from "node:fs";
import { type Command, Option } from "commander";
import { MigrationError } from "../../core/errors.js";
import { decodeToFile, encodeFile, feedDecoder, inspectStream, openDecoder, StreamFile } from "../../node/files.js";
import { createPool } from "../../core/pool/pool.js";
import { jobsOption, noteFor, parseJobs, threadsFor } from "../jobs.js";
import type { DecoderSummary } from "../../codec/decoder.js";
import type { EncoderSummary } from "../../codec/encoder.js";
import { HEADER_PREFIX, tagName } from "../../format/constants.js";
import { parseHeader, parseHeaderPrefix, type StreamHeader } from "../../format/header.js";
import {
  CliError,
  formatBytes,
  inputSize,
  OUTPUT_HELP,
  openOutput,
  openSource,
  parseSize,
  planOutput,
  privateTempFile,
  Progress,
  progressOption,
  type ReaderFlags,
  Reported,
  readerLimitOptions,
  readerLimits,
  readerOptions,
  report,
  snapshotPath,
  errorJson,
} from "../common.js";
import { headerJson, recordsJson, resources } from "../json.js";
import { isQemuInput, qemuApply, qemuDecode, qemuDiff, qemuEncodeTemplate, qemuInspect, qemuVerify } from "./qemu.js";

interface CommonFlags {
  json?: boolean;
  quiet?: boolean;
  progress?: boolean;
  jobs?: string;
}

interface EncodeFlags extends CommonFlags {
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
  /** A QEMU stream whose device state the output carries (the output is then a QEMU stream). */
  template?: string;
  region?: string;
}

interface DecodeFlags extends ReaderFlags, CommonFlags {
  output: string;
  base?: string;
  force?: boolean;
  /** QEMU streams: decode only this RAM block. */
  region?: string;
}

function encodeOptions(command: Command): Command {
  return progressOption(
    jobsOption(command)
      .requiredOption("-o, --output <stream>", "output stream file, or - for stdout")
      .option("--page-size <bytes>", "page size, a power of two from 64 to 1M", "4096")
      .option("--max-record <bytes>", "largest record payload", "1M")
      .addOption(new Option("--checksum <algorithm>", "record checksum").choices(["xxh3", "crc32c"]).default("xxh3"))
      .addOption(
        new Option("--compress <codec>", "page compression: lz4 sends runs of raw pages LZ4-compressed when smaller (format 1.1)")
          .choices(["none", "lz4"])
          .default("none"),
      )
      .option("--device-id <id>", "device compatibility id the target must match", "")
      .option("--config <file>", "device config blob to carry in the stream")
      .option("--no-verify", "skip re-reading the written stream before it replaces the output")
      .option("-f, --force", "replace an existing output file; write binary data even to a terminal")
      .option("--json", "print the summary as JSON")
      .option("-q, --quiet", "print nothing but errors"),
  ).addHelpText("after", OUTPUT_HELP);
}

function decodeOptions(command: Command): Command {
  return progressOption(
    readerOptions(jobsOption(command).requiredOption("-o, --output <snapshot>", "output snapshot file, or - for stdout"))
      .option("-f, --force", "replace an existing output file; write binary data even to a terminal")
      .option("--json", "print the summary as JSON")
      .option("-q, --quiet", "print nothing but errors"),
  ).addHelpText("after", OUTPUT_HELP);
}

async function runEncode(command: "encode" | "diff", snapshot: string, flags: EncodeFlags): Promise<void> {
  if (flags.template !== undefined) return qemuEncodeTemplate(snapshot, { ...flags, template: flags.template });
  if (command === "diff" && flags.base !== undefined && ((await isQemuInput(flags.base)) || (await isQemuInput(snapshot)))) {
    return qemuDiff(flags.base, snapshot, (oldRam, newRam) => runEncode("diff", newRam, { ...flags, base: oldRam }));
  }
  const started = performance.now();
  // Everything that can be refused is refused before any work.
  parseJobs(flags, undefined);
  const plan = planOutput(flags.output, { force: flags.force === true, inputs: [snapshot, flags.base, flags.config] });
  const base = flags.base === undefined ? undefined : await snapshotPath(flags.base, "base snapshot");
  const input = await snapshotPath(snapshot, "snapshot");
  const progress = new Progress(command, flags);
  let output: Awaited<ReturnType<typeof openOutput>> | undefined;
  let synced: Promise<void> | undefined;
  let pool: ReturnType<typeof createPool>["pool"];
  try {
    if (base) {
      const [oldSize, newSize] = [statSync(base.path).size, statSync(input.path).size];
      if (oldSize !== newSize) {
        throw new MigrationError(
          "ENODEV",
          `${flags.base} is ${oldSize} bytes and ${snapshot} ${newSize}: not the same device layout, no incremental stream between them`,
        );
      }
    }
    output = await openOutput(plan);
    // One pool for the encode and the verification that follows it.
    // Incremental streams are encoded on one thread (the pool encodes full streams).
    const jobs = base ? 1 : parseJobs(flags, statSync(input.path).size, flags.compress === "lz4");
    const pooled = createPool(jobs);
    pool = pooled.pool;
    if (pooled.note) noteFor(flags)(pooled.note);
    const summary = await encodeFile(input.path, (chunk, release) => output!.write(chunk, release), {
      // Every output releases what it wrote (a file at once, a stream once the system took it).
      ...(pool ? { pool, lend: true } : {}),
      pageSize: parseSize(flags.pageSize),
      maxRecordPayload: parseSize(flags.maxRecord),
      checksum: flags.checksum,
      compress: flags.compress,
      deviceId: flags.deviceId,
      ...(base ? { base: base.path } : {}),
      ...(flags.config !== undefined ? { config: readFileSync(flags.config) } : {}),
      onprogress: (done, total) => progress.update(done, total),
    });
    progress.done();
    let verified: DecoderSummary | undefined;
    // Every chunk in the file, then the written stream goes to disk while it is read back and
    // checked.
    const tempPath = await output.written();
    synced = output.syncAhead();
    if (flags.verify && tempPath !== undefined) {
      // The bytes on disk, not the ones in memory, are what a reader will get.
      progress.phase("verify", summary.bytes);
      const check = await inspectStream(
        new StreamFile(tempPath),
        { maxStateSize: summary.stateBytes, maxRecordPayload: parseSize(flags.maxRecord) },
        pool ? { pool } : {},
        (bytes) => progress.update(bytes),
      );
      progress.done();
      if (check.problem) throw new MigrationError("EIO", `written stream failed verification: ${check.problem.message}`);
      verified = check.summary;
    }
    await synced;
    await output.commit();
    const value = {
      output: flags.output,
      ...encodeJson(summary, verified),
      verified: verified !== undefined,
      jobs: pool ? pool.jobs : 1,
      ...resources(started, summary.stateBytes),
    };
    report(value, encodeText(summary, flags.output), { ...flags, dataOnStdout: plan.kind === "stdout" });
  } catch (error) {
    // The background flush holds the file's descriptor: it ends before the file is removed.
    await synced;
    output?.abort();
    throw error;
  } finally {
    pool?.close();
    progress.done();
    input.cleanup();
    base?.cleanup();
  }
}

async function runDecode(command: "decode" | "apply", stream: string, flags: DecodeFlags): Promise<void> {
  if (command === "decode" && (await isQemuInput(stream))) return qemuDecode(stream, flags);
  if (command === "apply" && flags.base !== undefined && (await isQemuInput(flags.base))) return qemuApply(flags.base, stream, flags);
  const started = performance.now();
  const plan = planOutput(flags.output, { force: flags.force === true, inputs: [stream, flags.base] });
  const base = flags.base === undefined ? undefined : await snapshotPath(flags.base, "base snapshot");
  const source = command === "apply" ? incrementalOnly(openSource(stream), stream) : openSource(stream);
  const progress = new Progress(command, flags);
  const total = inputSize(stream);
  // Decoded data reaches a stream output (stdout, a device, a FIFO) only after the stream
  // verified: it is staged in a private temporary file first.
  const staged = plan.kind === "file" ? undefined : privateTempFile("decoded.snapshot");
  try {
    // A base (apply) is decoded on one thread.
    const threads = threadsFor(flags, base ? 1 : parseJobs(flags, total));
    const summary = await decodeToFile(source, staged?.path ?? plan.target, {
      jobs: threads.jobs,
      onnote: threads.onnote,
      ...(base ? { base: base.path } : {}),
      ...(flags.deviceId !== undefined ? { deviceId: flags.deviceId } : {}),
      ...readerLimits(flags),
      onprogress: (bytes) => progress.update(bytes, total),
    });
    progress.done();
    if (staged) {
      const out = await openOutput(plan);
      try {
        const size = statSync(staged.path).size;
        progress.phase("write", size);
        let done = 0;
        for await (const chunk of openSource(staged.path)) {
          await out.write(chunk);
          progress.update((done += chunk.length), size);
        }
        progress.done();
        await out.commit();
      } catch (error) {
        out.abort();
        throw error;
      }
    }
    const value = { output: flags.output, ...decodeJson(summary), jobs: threads.used(), ...resources(started, summary.header?.totalSize ?? 0) };
    report(value, decodeText(summary, flags.output), { ...flags, dataOnStdout: plan.kind === "stdout" });
  } finally {
    progress.done();
    staged?.cleanup();
    base?.cleanup();
  }
}

function encodeJson(s: EncoderSummary, verified: DecoderSummary | undefined): Record<string, unknown> {
  return {
    stateBytes: s.stateBytes,
    bytes: s.bytes,
    ratio: s.stateBytes > 0 ? s.bytes / s.stateBytes : null,
    checksum: s.checksum,
    pages: s.pages,
    compressed: s.compressed,
    records: verified ? recordsJson(verified.records) : { total: s.records },
    rounds: verified ? verified.rounds : [],
    config: s.config,
  };
}

function encodeText(s: EncoderSummary, output: string): string {
  const ratio = s.stateBytes > 0 ? ` (${((s.bytes / s.stateBytes) * 100).toFixed(1)}% of the state)` : "";
  return `encoded ${formatBytes(s.stateBytes)} into ${formatBytes(s.bytes)}${ratio} -> ${output === "-" ? "stdout" : output}: ${s.records} records, pages raw ${s.pages.raw}, lz4 ${s.pages.lz4}, zero ${s.pages.zero}, delta ${s.pages.delta}, unchanged ${s.pages.clean}`;
}

function decodeJson(s: DecoderSummary): Record<string, unknown> {
  return {
    ...(s.header ? { header: headerJson(s.header), stateBytes: s.header.totalSize } : {}),
    bytes: s.bytes,
    ratio: s.ratio ?? null,
    pages: s.pages,
    records: recordsJson(s.records),
    rounds: s.rounds,
    ended: s.ended,
  };
}

function decodeText(s: DecoderSummary, output: string): string {
  return `decoded ${formatBytes(s.header?.totalSize ?? 0)} from ${formatBytes(s.bytes)} of stream -> ${output === "-" ? "stdout" : output}: verified`;
}

/** The header of a stream's first bytes, parsed without limits; undefined until it is all there (or unreadable). */
function headerOf(bytes: Uint8Array, keep: number): StreamHeader | undefined {
  try {
    if (bytes.length < HEADER_PREFIX) return undefined;
    const length = parseHeaderPrefix(bytes, keep);
    if (bytes.length < length) return undefined;
    return parseHeader(bytes.subarray(0, length), { maxStateSize: Number.MAX_SAFE_INTEGER, maxRecordPayload: 0xffffffff });
  } catch {
    return undefined;
  }
}

/**
 * `apply` refuses a full stream before anything is written: it would ignore the base, and the
 * output would be the stream's own state, not "base + changes" (most likely the wrong file was
 * given). The first bytes are held until the header is readable; a header the decoder will refuse
 * anyway passes through to be reported as such.
 */
async function* incrementalOnly(source: AsyncIterable<Uint8Array>, shown: string): AsyncIterable<Uint8Array> {
  const held: Uint8Array[] = [];
  let bytes = 0;
  let checked = false;
  for await (const chunk of source) {
    if (checked) {
      yield chunk;
      continue;
    }
    held.push(chunk);
    bytes += chunk.length;
    const header = headerOf(Buffer.concat(held), KEEP);
    if (header === undefined && bytes < KEEP) continue;
    if (header !== undefined && header.baseDigest === undefined) {
      throw new CliError("EINVAL", `${shown === "-" ? "stdin" : shown} is a full stream, not an incremental one: apply would ignore the base`, {
        hint: `a full stream needs no base: migstream decode ${shown} -o <out>`,
      });
    }
    checked = true;
    yield* held;
  }
  if (!checked) yield* held;
}

/** Bytes of a stream's start kept to show a header the decoder refused. */
const KEEP = 1 << 16;

/**
 * The input of inspect, with the header it starts with: when the decoder refuses the header (a
 * limit), inspect still shows what it says, parsed again without limits. A regular file is read
 * straight into the decoder's memory, and its start read again only if it is needed; anything
 * else passes through, its start kept on the way.
 */
function headerKeeper(source: AsyncIterable<Uint8Array>): { source: AsyncIterable<Uint8Array>; header: () => StreamHeader | undefined } {
  if (source instanceof StreamFile) return { source, header: () => headerOf(readStart(source.path, KEEP), KEEP) };
  const kept: Uint8Array[] = [];
  let keptBytes = 0;
  async function* pass(): AsyncIterable<Uint8Array> {
    for await (const chunk of source) {
      if (keptBytes < KEEP) {
        kept.push(chunk.slice(0, KEEP - keptBytes));
        keptBytes += Math.min(chunk.length, KEEP - keptBytes);
      }
      yield chunk;
    }
  }
  return {
    source: pass(),
    header: () => headerOf(Buffer.concat(kept), KEEP),
  };
}

/** Up to `length` bytes from the start of the file at `path` (fewer if it is shorter, none if it is gone). */
function readStart(path: string, length: number): Uint8Array {
  const bytes = new Uint8Array(length);
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch {
    return new Uint8Array(0);
  }
  try {
    return bytes.subarray(0, readSync(fd, bytes, 0, length, 0));
  } catch {
    return new Uint8Array(0);
  } finally {
    closeSync(fd);
  }
}

/** LZ4 records: their payload bytes against the state bytes they cover. */
function compressedJson(summary: DecoderSummary): { records: number; bytes: number; stateBytes: number; ratio: number | null } {
  const pageSize = summary.header?.pageSize ?? 0;
  // Pages of LZ4 records are whole except a region's last one: pages x size is within a page.
  const stateBytes = summary.pages.lz4 * pageSize;
  return { records: summary.records.lz4, bytes: summary.compressedBytes, stateBytes, ratio: stateBytes > 0 ? summary.compressedBytes / stateBytes : null };
}

async function runInspect(stream: string, flags: CommonFlags & { maxRecord: string; maxState: string }): Promise<void> {
  if (await isQemuInput(stream)) return qemuInspect(stream, flags);
  const started = performance.now();
  const progress = new Progress("inspect", flags);
  const total = inputSize(stream);
  const keeper = headerKeeper(openSource(stream));
  const { summary, bytesByKind, problem } = await inspectStream(keeper.source, readerLimits(flags), {}, (done) => progress.update(done, total)).finally(() =>
    progress.done(),
  );
  // The header the decoder accepted, or else the one it refused (shown so that the reason is).
  const h = summary.header ?? (problem ? keeper.header() : undefined);
  if (flags.json) {
    const value = {
      ...(h ? { header: headerJson(h), stateBytes: h.totalSize } : {}),
      bytes: summary.bytes,
      compressed: compressedJson(summary),
      ratio: summary.ratio ?? null,
      pages: summary.pages,
      records: recordsJson(summary.records),
      bytesByKind,
      rounds: summary.rounds,
      valid: problem === undefined,
      ...(h?.baseDigest !== undefined ? { needsBase: true } : {}),
      ...(problem ? { error: errorJson(problem) } : {}),
      ...resources(started, h?.totalSize ?? 0),
    };
    report(value, "", flags);
  } else {
    const lines: string[] = [];
    if (h) {
      lines.push(
        `format      ${h.major}.${h.minor}, checksum ${h.checksum}, compression ${h.compression}, page size ${h.pageSize}, max record ${formatBytes(h.maxRecordPayload)}`,
      );
      lines.push(`device id   ${JSON.stringify(h.deviceId)}`);
      lines.push(`kind        ${h.baseDigest === undefined ? "full" : `incremental (base 0x${h.baseDigest.toString(16).padStart(16, "0")})`}`);
      lines.push(`state       ${formatBytes(h.totalSize)} in ${h.regions.length} region(s)`);
      for (const r of h.regions) lines.push(`  region    ${r.name.padEnd(16)} ${formatBytes(r.size)}`);
    }
    const r = summary.records;
    lines.push(`records     ${r.pages + r.lz4 + r.zero + r.delta + r.config + r.round + r.skipped + r.end} in ${formatBytes(summary.bytes)}`);
    lines.push(
      `  ${tagName(1).padEnd(9)} ${String(r.pages).padStart(8)} records ${String(summary.pages.raw).padStart(9)} pages ${formatBytes(bytesByKind.pages).padStart(11)}`,
    );
    if (h?.compression === "lz4") {
      const c = compressedJson(summary);
      const ratio = c.ratio === null ? "" : `  (${(c.ratio * 100).toFixed(1)}% of ${formatBytes(c.stateBytes)})`;
      lines.push(
        `  ${tagName(4).padEnd(9)} ${String(r.lz4).padStart(8)} records ${String(summary.pages.lz4).padStart(9)} pages ${formatBytes(bytesByKind.lz4).padStart(11)}${ratio}`,
      );
    }
    lines.push(
      `  ${tagName(2).padEnd(9)} ${String(r.zero).padStart(8)} records ${String(summary.pages.zero).padStart(9)} pages ${formatBytes(bytesByKind.zero).padStart(11)}`,
    );
    lines.push(
      `  ${tagName(3).padEnd(9)} ${String(r.delta).padStart(8)} records ${String(summary.pages.delta).padStart(9)} pages ${formatBytes(bytesByKind.delta).padStart(11)}`,
    );
    lines.push(`  config    ${String(r.config).padStart(8)}   round ${r.round}   skipped ${r.skipped}   end ${r.end}`);
    for (const round of summary.rounds) {
      lines.push(`  round ${String(round.round).padStart(3)}  ${round.pages} pages, ${formatBytes(round.bytes)}, ${formatBytes(round.dirtyBytes)} dirty left`);
    }
    if (summary.ratio !== undefined) lines.push(`ratio       ${(summary.ratio * 100).toFixed(2)}% of the state`);
    if (problem) lines.push(`problem     ${problem.code}: ${problem.message}`);
    else lines.push(h?.baseDigest !== undefined ? "valid       yes (incremental: applies only onto its base)" : "valid       yes");
    process.stdout.write(`${lines.join("\n")}\n`);
  }
  if (problem) throw new Reported(problem);
}

/**
 * verify: the whole stream, written nowhere. An incremental stream without --base is checked in
 * everything but its base (as inspect does): it is reported valid, with needsBase, and exits 0;
 * with --base the base is checked too (another base: exit 3).
 */
async function runVerify(stream: string, flags: Omit<DecodeFlags, "output" | "force">): Promise<void> {
  if (await isQemuInput(stream)) return qemuVerify(stream, flags);
  const started = performance.now();
  const base = flags.base === undefined ? undefined : await snapshotPath(flags.base, "base snapshot");
  const progress = new Progress("verify", flags);
  const total = inputSize(stream);
  try {
    const source = openSource(stream);
    let summary: DecoderSummary;
    // A base is checked on one thread.
    const threads = threadsFor(flags, base ? 1 : parseJobs(flags, total));
    if (base) {
      summary = await decodeToFile(source, undefined, {
        jobs: threads.jobs,
        onnote: threads.onnote,
        base: base.path,
        ...(flags.deviceId !== undefined ? { deviceId: flags.deviceId } : {}),
        ...readerLimits(flags),
        onprogress: (bytes) => progress.update(bytes, total),
      });
    } else {
      const decoder = openDecoder(
        { open: () => undefined, apply: () => undefined, commit: () => undefined, abort: () => undefined },
        {
          ...(flags.deviceId !== undefined ? { deviceId: flags.deviceId } : {}),
          ...readerLimits(flags),
          // Without its base, an incremental stream is checked in everything else.
          baseDigest: (header) => header.baseDigest!,
        },
        { jobs: threads.jobs, onnote: threads.onnote },
        false,
      );
      try {
        await feedDecoder(decoder, source, (bytes) => progress.update(bytes, total));
        await decoder.end();
      } catch (error) {
        await decoder.abort();
        throw error;
      } finally {
        decoder.close();
      }
      summary = decoder.summary();
    }
    progress.done();
    const needsBase = summary.header?.baseDigest !== undefined && !base;
    const value = {
      valid: true,
      ...(summary.header?.baseDigest !== undefined ? { needsBase, baseChecked: !needsBase } : {}),
      ...decodeJson(summary),
      jobs: threads.used(),
      ...resources(started, summary.header?.totalSize ?? 0),
    };
    const text = needsBase
      ? `valid: ${formatBytes(summary.bytes)} of stream for ${formatBytes(summary.header?.totalSize ?? 0)} of state; incremental, its base not checked\nhint: give --base <snapshot> to check it against its base too`
      : `valid: ${formatBytes(summary.bytes)} of stream for ${formatBytes(summary.header?.totalSize ?? 0)} of state`;
    report(value, text, flags);
  } finally {
    progress.done();
    base?.cleanup();
  }
}

export function registerCodecCommands(program: Command): void {
  encodeOptions(
    program
      .command("encode")
      .description("encode a state snapshot into a migration stream")
      .argument("<snapshot>", "snapshot file, or - for stdin")
      .option("--base <snapshot>", "previous snapshot (or - for stdin): write an incremental stream against it")
      .option("--template <qemu-stream>", "write a QEMU stream: this QEMU stream's device state with the snapshot's RAM (all blocks concatenated)")
      .option("--region <block>", "with --template: the snapshot is this one RAM block; the others come from the template"),
  )
    .addHelpText(
      "after",
      "\nExamples:\n  migstream encode vm.state -o vm.mig\n  cat vm.state | migstream encode - -o - | migstream decode - -o copy.state\n\nA pipe may cross machines: put `ssh host` before the second migstream.",
    )
    .action((snapshot: string, flags: EncodeFlags) => runEncode("encode", snapshot, flags));

  decodeOptions(
    program
      .command("decode")
      .description("decode a migration stream into a snapshot; refuses a stream that does not validate")
      .argument("<stream>", "stream file, or - for stdin")
      .option("--base <snapshot>", "the base snapshot an incremental stream was made against (or - for stdin)")
      .option("--region <block>", "QEMU streams: only this RAM block (default: all blocks, concatenated in stream order)"),
  )
    .addHelpText("after", "\nExamples:\n  migstream decode vm.mig -o vm.state\n  migstream decode - -o vm.state < vm.mig")
    .action((stream: string, flags: DecodeFlags) => runDecode("decode", stream, flags));

  encodeOptions(
    program
      .command("diff")
      .description("write an incremental stream from <old> to <new> (pages that differ, XBZRLE-coded when smaller)")
      .argument("<old>", "base snapshot, or - for stdin")
      .argument("<new>", "new snapshot, or - for stdin"),
  )
    .addHelpText(
      "after",
      "\nSnapshots of different sizes (another device layout) exit 3.\n\nExample:\n  migstream diff vm.v1.state vm.v2.state -o v1-to-v2.mig",
    )
    .action((oldPath: string, newPath: string, flags: EncodeFlags) => runEncode("diff", newPath, { ...flags, base: oldPath }));

  decodeOptions(
    program
      .command("apply")
      .description("apply an incremental stream to <base>, writing the new snapshot")
      .argument("<base>", "base snapshot, or - for stdin")
      .argument("<stream>", "incremental stream file, or - for stdin"),
  )
    .addHelpText("after", "\nExample:\n  migstream apply vm.v1.state v1-to-v2.mig -o vm.v2.state")
    .action((base: string, stream: string, flags: DecodeFlags) => runDecode("apply", stream, { ...flags, base }));

  progressOption(readerLimitOptions(program.command("inspect")))
    .description("show a stream's header, regions, records by kind, rounds and ratio, and the first problem found")
    .argument("<stream>", "stream file, or - for stdin")
    .option("--json", "print as JSON")
    .addHelpText(
      "after",
      "\nThe header is shown even when the stream is refused (a limit, say); the exit code is then the\nproblem's (2 corrupt or over a limit, 3 incompatible).\n\nExample:\n  migstream inspect vm.mig --json",
    )
    .action((stream: string, flags: CommonFlags & { maxRecord: string; maxState: string }) => runInspect(stream, flags));

  progressOption(readerOptions(jobsOption(program.command("verify"))))
    .description("validate a stream completely without writing anything")
    .argument("<stream>", "stream file, or - for stdin")
    .option("--base <snapshot>", "check an incremental stream against its base too")
    .option("--json", "print the result as JSON")
    .option("-q, --quiet", "print nothing but errors")
    .addHelpText(
      "after",
      "\nAn incremental stream without --base is checked in everything but its base: it is reported\nvalid (needsBase in --json) and exits 0; decoding it will need the base.\n\nExample:\n  migstream verify vm.mig && echo ok",
    )
    .action((stream: string, flags: Omit<DecodeFlags, "output" | "force">) => runVerify(stream, flags));
}
