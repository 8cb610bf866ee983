// demo, send, receive: live migration of a running device over TCP, with the v2 state machine
// on both ends (pre-copy rounds while a workload keeps writing, stop-copy, RESUMING validated on
// the target before anything is written).
import { closeSync, fstatSync, openSync, readSync } from "node:fs";
import { type Command, Option } from "commander";
import { MigrationError } from "../../core/errors.js";
import type { DirtyTracking } from "../../device/device-model.js";
import type { PrecopyRoundReport } from "../../migration/precopy.js";
import { MigrationDevice } from "../../migration/v2/migration-device.js";
import { AtomicFile, ioError } from "../../node/atomic-file.js";
import { receiveDevice, type ReceiveResult, sendDevice, type SendOptions, type SendResult } from "../../node/tcp.js";
import {
  context,
  formatBytes,
  OUTPUT_HELP,
  openOutput,
  parseSize,
  planOutput,
  Progress,
  type ReaderFlags,
  readerLimits,
  readerOptions,
  report,
  snapshotPath,
  toJson,
} from "../common.js";
import { migrationReportHtml } from "../report.js";
import { createSyntheticDevice, Workload } from "../synthetic-device.js";

// ---------------------------------------------------------------------------------------------
// Option parsing

/** "host:port", "[v6]:port" or "port" (loopback). */
export function parseEndpoint(text: string, defaultHost = "127.0.0.1"): { host: string; port: number } {
  const match = /^(?:\[([^\]]+)\]:|([^:]*):)?(\d+)$/.exec(text.trim());
  const port = match ? Number(match[3]) : NaN;
  if (!match || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw new MigrationError("EINVAL", `invalid address ${JSON.stringify(text)} (expected host:port or port)`);
  }
  return { host: match[1] ?? (match[2] || defaultHost), port };
}

/**
 * A dirty rate in pages per second: a bare number (or "<n>p", "<n> pages") is pages per second;
 * a size with a unit ("16M", "16MiB/s", "512k") is bytes per second.
 */
export function parseDirtyRate(text: string, pageSize: number): number {
  const spec = text.trim().replace(/\/s$/i, "");
  const pages = /^(\d+(?:\.\d+)?)\s*(?:p|pages?)?$/i.exec(spec);
  if (pages) return Number(pages[1]);
  if (!/[kmgt]|b$/i.test(spec)) throw new MigrationError("EINVAL", `invalid dirty rate ${JSON.stringify(text)}`);
  return parseSize(spec) / pageSize;
}

function parseRate(text: string): number {
  return parseSize(text.trim().replace(/\/s$/i, ""));
}

function parseCount(text: string, what: string): number {
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < 0) throw new MigrationError("EINVAL", `invalid ${what} ${JSON.stringify(text)}`);
  return n;
}

// ---------------------------------------------------------------------------------------------
// Reports

const hex = (v: bigint): string => `0x${v.toString(16).padStart(16, "0")}`;

function roundsTable(rounds: readonly PrecopyRoundReport[]): string[] {
  if (rounds.length === 0) return ["  (no pre-copy rounds)"];
  const lines = ["  round     pages        bytes   dirty left    dirty rate   exp. downtime      time"];
  for (const r of rounds) {
    lines.push(
      `  ${String(r.round).padStart(5)} ${String(r.pages).padStart(9)} ${formatBytes(r.bytes).padStart(12)} ${formatBytes(r.dirtyBytes).padStart(12)} ${`${formatBytes(r.dirtyRate)}/s`.padStart(13)} ${`${r.expectedDowntimeMs.toFixed(1)} ms`.padStart(15)} ${`${r.durationMs.toFixed(0)} ms`.padStart(9)}`,
    );
  }
  return lines;
}

function migrationJson(sent: SendResult): Record<string, unknown> {
  return {
    rounds: sent.rounds.map((r) => ({ ...r, durationMs: round3(r.durationMs), dirtyRate: Math.round(r.dirtyRate), expectedDowntimeMs: round3(r.expectedDowntimeMs) })),
    converged: sent.converged,
    bytes: sent.bytes,
    stopCopyBytes: sent.stopCopyBytes,
    downtimeMs: round3(sent.downtimeMs),
    durationMs: round3(sent.durationMs),
    throughput: Math.round(sent.throughput),
  };
}

function migrationText(sent: SendResult): string[] {
  return [
    ...roundsTable(sent.rounds),
    `  stop-copy ${formatBytes(sent.stopCopyBytes)} (pre-copy ended: ${sent.converged})`,
    `total       ${formatBytes(sent.bytes)} in ${(sent.durationMs / 1000).toFixed(2)} s (${formatBytes(sent.throughput)}/s), downtime ${sent.downtimeMs.toFixed(1)} ms (measured)`,
  ];
}

const round3 = (n: number): number => Math.round(n * 1000) / 1000;

/** Writes the HTML picture of a migration (--report), atomically like every output. */
function writeReport(path: string, sent: SendResult, flags: MigrateFlags, title: string, facts: (readonly [string, string])[]): void {
  const file = new AtomicFile(path);
  try {
    file.writeAt(new TextEncoder().encode(migrationReportHtml(sent, { title, thresholdBytes: parseSize(flags.threshold), facts })), 0);
    file.commit();
  } catch (error) {
    file.abort();
    throw error;
  }
}

/**
 * The progress line of a migration: its phase (pre-copy round N, stop-copy), what is dirty
 * against the threshold, and the time, redrawn while the rounds run.
 */
function migrationProgress(label: string, flags: MigrateFlags, device: MigrationDevice): { onRound: (r: PrecopyRoundReport) => void; done: () => void } {
  const progress = new Progress(label, flags).tick();
  const threshold = parseSize(flags.threshold);
  const maxRounds = Math.max(1, parseCount(flags.maxRounds, "round count"));
  let previous = Infinity;
  let count = 0;
  progress.phase("pre-copy round 0", device.model.size);
  let poll: ReturnType<typeof setInterval> | undefined;
  if (progress.enabled) {
    // The first pass's progress, as VFIO_MIG_GET_PRECOPY_INFO tells a VMM: its initial bytes
    // not read yet (asked only while a progress line is drawn).
    poll = setInterval(() => {
      if (count > 0 || !device.state.startsWith("PRE_COPY")) return clearInterval(poll);
      try {
        const { initialBytes } = device.precopyInfo();
        progress.update(Math.max(0, device.model.size - initialBytes), device.model.size);
      } catch {
        clearInterval(poll); // the device left PRE_COPY between the check and the call
      }
    }, 250);
    poll.unref();
  }
  return {
    done: () => {
      if (poll) clearInterval(poll);
      progress.done();
    },
    onRound: (r) => {
      count++;
      // The same rules as pre-copy's end (threshold, max rounds, no progress): the next phase.
      const last = r.dirtyBytes <= threshold || count >= maxRounds || r.dirtyBytes > previous * 0.95;
      previous = r.dirtyBytes;
      progress.phase(last ? "stop-copy" : `pre-copy round ${r.round + 1}`);
      progress.note(`${formatBytes(r.dirtyBytes)} dirty (threshold ${formatBytes(threshold)})`);
    },
  };
}

function deviceJson(device: MigrationDevice): Record<string, unknown> {
  return {
    size: device.model.size,
    pageSize: device.model.pageSize,
    tracking: device.model.tracking,
    deviceId: device.deviceId,
    regions: device.model.layout,
  };
}

function deviceText(device: MigrationDevice): string {
  const regions = device.model.layout.map((r) => `${r.name} ${formatBytes(r.size)}`).join(", ");
  return `${formatBytes(device.model.size)} (${regions}), page size ${device.model.pageSize}, tracking ${device.model.tracking}`;
}

// ---------------------------------------------------------------------------------------------
// Commands

interface MigrateFlags {
  tracking: DirtyTracking;
  threshold: string;
  maxRounds: string;
  bandwidth?: string;
  json?: boolean;
  quiet?: boolean;
  progress?: boolean;
  report?: string;
}

interface DemoFlags extends MigrateFlags {
  size: string;
  dirtyRate: string;
  seed: string;
  pageSize: string;
  deviceId?: string;
}

interface SendFlags extends DemoFlags {
  to: string;
  demo?: boolean;
}

interface ReceiveFlags extends ReaderFlags {
  listen: string;
  output: string;
  force?: boolean;
  json?: boolean;
  quiet?: boolean;
  progress?: boolean;
}

function migrateOptions(command: Command): Command {
  return command
    .addOption(new Option("--tracking <mode>", "dirty tracking of the source device").choices(["explicit", "shadow", "hash"]).default("explicit"))
    .option("--threshold <bytes>", "stop-copy once at most this much is dirty", "1M")
    .option("--max-rounds <n>", "at most this many pre-copy rounds", "30")
    .option("--bandwidth <bytes/s>", "link speed for the expected downtime (default: measured)")
    .option("--json", "print the report as JSON on stdout")
    .option("-q, --quiet", "print nothing but errors")
    .option("--report <file.html>", "write the migration as an HTML page: rounds charted, summary table (self-contained, no network)")
    .option("--no-progress", "no progress line on stderr (also: NO_PROGRESS=1)");
}

function demoOptions(command: Command, sizeDefault: string): Command {
  return command
    .option("--size <bytes>", "size of the synthetic device", sizeDefault)
    .option("--dirty-rate <rate>", "workload writes: pages/s (4096, 4096p) or bytes/s (16M, 16MiB/s); 0 for none", "4096")
    .option("--seed <n>", "seed of the synthetic content and workload", "1")
    .option("--page-size <bytes>", "page size", "4096");
}

const DEMO_DEVICE_ID = "migstream-demo";

// No AbortSignal: on SIGINT/SIGTERM main.ts removes pending outputs and exits at once, which
// also closes the sockets (the peer then sees a dropped connection).
function sendOptions(flags: MigrateFlags): Omit<SendOptions, "port" | "host"> {
  return {
    thresholdBytes: parseSize(flags.threshold),
    maxRounds: Math.max(1, parseCount(flags.maxRounds, "round count")),
    ...(flags.bandwidth !== undefined ? { bandwidth: parseRate(flags.bandwidth) } : {}),
  };
}

function demoDevice(flags: DemoFlags): { device: MigrationDevice; workload: Workload; rate: number } {
  const pageSize = parseSize(flags.pageSize);
  const seed = parseCount(flags.seed, "seed");
  const device = createSyntheticDevice({ size: parseSize(flags.size), pageSize, tracking: flags.tracking, seed, deviceId: flags.deviceId ?? DEMO_DEVICE_ID });
  const rate = parseDirtyRate(flags.dirtyRate, pageSize);
  return { device, workload: new Workload(device, rate, seed), rate };
}

/** --report's file is checked before the migration (its directory exists, it is no directory). */
function checkReport(flags: MigrateFlags): void {
  if (flags.report !== undefined) planOutput(flags.report, { force: true });
}

async function runDemo(flags: DemoFlags): Promise<void> {
  checkReport(flags);
  const started = performance.now();
  const { device, workload, rate } = demoDevice(flags);
  const createdMs = performance.now() - started;
  let target: ReceiveResult | undefined;
  // Ends the receiver if the sender fails before connecting: a listening server would keep
  // the process alive.
  const receiver = new AbortController();
  try {
    let listening!: (port: number) => void;
    const bound = new Promise<number>((resolve) => (listening = resolve));
    const receiving = receiveDevice({ port: 0, host: "127.0.0.1", final: "STOP", signal: receiver.signal, onListening: (a) => listening(a.port) });
    // The receiver may fail before the sender is done; keep its rejection for later.
    receiving.catch(() => undefined);
    const port = await Promise.race([bound, receiving.then(() => -1)]);
    workload.start();
    let sent: SendResult;
    const progress = migrationProgress("demo", flags, device);
    try {
      sent = await sendDevice(device, { ...sendOptions(flags), host: "127.0.0.1", port, onRound: progress.onRound });
    } finally {
      progress.done();
      workload.stop();
    }
    target = await receiving;
    const sourceDigest = device.model.digest();
    const identical = sourceDigest === target.digest && sent.digest === target.digest;
    const totalMs = performance.now() - started;
    const value = {
      device: deviceJson(device),
      workload: { pagesPerSecond: rate, writes: workload.stats.writes, bytes: workload.stats.bytes, stoppedAt: workload.stats.stoppedAt ?? null },
      transport: { kind: "tcp", host: "127.0.0.1", port },
      ...migrationJson(sent),
      target: { state: target.device.state, bytes: target.bytes, durationMs: round3(target.durationMs) },
      verification: { identical, sourceDigest: hex(sourceDigest), targetDigest: hex(target.digest) },
      setupMs: round3(createdMs),
      totalMs: round3(totalMs),
    };
    const text = [
      `demo device ${deviceText(device)}`,
      `workload    ${Math.round(rate)} pages/s: ${workload.stats.writes} writes (${formatBytes(workload.stats.bytes)}) during the migration, stopped at ${workload.stats.stoppedAt ?? "(not stopped)"}`,
      `transport   tcp 127.0.0.1:${port}`,
      ...migrationText(sent),
      identical
        ? `verified    source and target states are identical (xxh3 ${hex(target.digest)})`
        : `MISMATCH    source ${hex(sourceDigest)} != target ${hex(target.digest)}`,
      `time        ${(totalMs / 1000).toFixed(2)} s in all (${(createdMs / 1000).toFixed(2)} s creating the device)`,
    ].join("\n");
    if (flags.report !== undefined) {
      writeReport(flags.report, sent, flags, `migstream demo: ${deviceText(device)}`, [
        ["device", deviceText(device)],
        ["workload", `${Math.round(rate)} pages/s, ${workload.stats.writes} writes`],
        ["verified", identical ? "source and target identical" : "MISMATCH"],
      ]);
    }
    report(value, text, flags);
    if (!identical) throw new MigrationError("EBADMSG", "the migrated state differs from the source's");
  } finally {
    receiver.abort();
    workload.stop();
    target?.device.free();
    device.free();
  }
}

/** Loads a snapshot file into a one-region device ("state"), read straight into core memory. */
function snapshotDevice(path: string, flags: SendFlags): MigrationDevice {
  let fd: number;
  let size: number;
  try {
    fd = openSync(path, "r");
    size = fstatSync(fd).size;
  } catch (cause) {
    throw ioError(`cannot open ${path}`, cause);
  }
  try {
    if (size === 0) throw new MigrationError("EINVAL", `${path} is empty: nothing to migrate`);
    const device = new MigrationDevice({
      regions: [{ name: "state", size }],
      pageSize: parseSize(flags.pageSize),
      tracking: flags.tracking,
      deviceId: flags.deviceId ?? "",
    });
    try {
      const view = device.model.view(0);
      for (let at = 0; at < size; ) {
        const n = readSync(fd, view, at, Math.min(size - at, 4 << 20), at);
        if (n === 0) throw new MigrationError("EIO", `${path} ended early at byte ${at} (changed while reading?)`);
        at += n;
      }
    } catch (error) {
      device.free();
      throw error instanceof MigrationError ? error : ioError(`cannot read ${path}`, error);
    }
    device.model.resetTracking();
    return device;
  } finally {
    closeSync(fd);
  }
}

async function runSend(snapshot: string | undefined, flags: SendFlags): Promise<void> {
  if ((snapshot === undefined) === (flags.demo !== true)) {
    throw new MigrationError("EINVAL", "send needs a snapshot file or --demo (not both)");
  }
  const { host, port } = parseEndpoint(flags.to);
  checkReport(flags);
  const demo = flags.demo ? demoDevice(flags) : undefined;
  // "-": the snapshot comes on stdin (spooled to a private temporary file, removed at once).
  const spooled = snapshot === undefined ? undefined : await snapshotPath(snapshot, "snapshot");
  let device: MigrationDevice;
  try {
    device = demo?.device ?? snapshotDevice(spooled!.path, flags);
  } finally {
    spooled?.cleanup();
  }
  try {
    demo?.workload.start();
    let sent: SendResult;
    const progress = migrationProgress("send", flags, device);
    try {
      sent = await sendDevice(device, { ...sendOptions(flags), host, port, onRound: progress.onRound });
    } finally {
      progress.done();
      demo?.workload.stop();
    }
    const value = {
      to: `${host}:${port}`,
      device: deviceJson(device),
      ...(demo ? { workload: { pagesPerSecond: demo.rate, writes: demo.workload.stats.writes, bytes: demo.workload.stats.bytes } } : {}),
      ...migrationJson(sent),
      digest: hex(sent.digest),
      accepted: true,
    };
    const text = [
      `sent ${demo ? "demo device" : snapshot} ${deviceText(device)} to ${host}:${port}`,
      ...migrationText(sent),
      `accepted    the receiver validated the state (xxh3 ${hex(sent.digest)})`,
    ].join("\n");
    if (flags.report !== undefined) {
      writeReport(flags.report, sent, flags, `migstream send ${demo ? "--demo" : snapshot} to ${host}:${port}`, [
        ["device", deviceText(device)],
        ["receiver", `${host}:${port}, validated (xxh3 ${hex(sent.digest)})`],
      ]);
    }
    report(value, text, flags);
  } finally {
    device.free();
  }
}

async function runReceive(flags: ReceiveFlags): Promise<void> {
  const { host, port } = parseEndpoint(flags.listen);
  const toStdout = flags.output === "-";
  // Created before listening: an unwritable output fails now, not after the whole transfer.
  // It stays a temporary file until the migrated state validated.
  const plan = planOutput(flags.output, { force: flags.force === true });
  const output = plan.kind === "file" ? await openOutput(plan) : undefined;
  const progress = new Progress("receive", flags);
  let received: ReceiveResult | undefined;
  try {
    received = await receiveDevice({
      host,
      port,
      final: "STOP",
      ...(flags.deviceId !== undefined ? { deviceId: flags.deviceId } : {}),
      ...readerLimits(flags),
      onListening: (a) => {
        // Always said (scripts read the port when listening on port 0). When the --json report
        // goes to stderr too (-o -), stderr is JSON Lines: this is its first line.
        if (flags.json && toStdout) process.stderr.write(`${toJson({ command: context.command, event: "listening", host: a.host, port: a.port }, false)}\n`);
        else if (!flags.quiet) process.stderr.write(`listening on ${a.host}:${a.port}\n`);
      },
      onConnection: (peer) => {
        // The line's clock starts with the sender, not with the wait for it.
        if (progress.enabled) progress.phase(`from ${peer.host}:${peer.port}`);
        else if (!flags.quiet && !flags.json) process.stderr.write(`receiving from ${peer.host}:${peer.port}\n`);
      },
      onProgress: (bytes, total) => progress.update(bytes, total),
    });
    progress.done();
    const device = received.device;
    // A stream output (stdout, device, FIFO) is opened only now: a FIFO's reader gets the state.
    const out = output ?? (await openOutput(plan));
    try {
      for (let i = 0; i < device.model.regions.length; i++) {
        // The views are into core memory and only valid until the next allocation: take each
        // right before writing it (out.write allocates nothing in core memory).
        await out.write(device.model.view(i));
      }
      await out.commit();
    } catch (error) {
      out.abort();
      throw error;
    }
    const h = received.header;
    const value = {
      output: flags.output,
      bytes: received.bytes,
      durationMs: round3(received.durationMs),
      throughput: Math.round(received.bytes / Math.max(received.durationMs / 1000, 1e-6)),
      header: { deviceId: h.deviceId, pageSize: h.pageSize, totalSize: h.totalSize, checksum: h.checksum, regions: h.regions },
      state: device.state,
      digest: hex(received.digest),
    };
    const text = `received ${formatBytes(h.totalSize)} of state (${formatBytes(received.bytes)} of stream in ${(received.durationMs / 1000).toFixed(2)} s) -> ${toStdout ? "stdout" : flags.output}: validated (xxh3 ${hex(received.digest)})`;
    report(value, text, { ...flags, dataOnStdout: toStdout });
  } catch (error) {
    output?.abort();
    throw error;
  } finally {
    progress.done();
    received?.device.free();
  }
}

export function registerLiveCommands(program: Command): void {
  migrateOptions(
    demoOptions(
      program
        .command("demo")
        .description(
          "live-migrate a synthetic device while a workload dirties it: pre-copy rounds, stop-copy and resume into a second device over loopback TCP, then compare the two states",
        ),
      "256M",
    ).option("--device-id <id>", "compatibility id of the synthetic device", DEMO_DEVICE_ID),
  )
    .addHelpText(
      "after",
      "\nExamples:\n  migstream demo\n  migstream demo --size 1G --dirty-rate 64M/s --tracking shadow\n  migstream demo --size 16M --json | jq .verification",
    )
    .action(runDemo);

  migrateOptions(
    demoOptions(
      program
        .command("send")
        .description("live-migrate a device to a receiver over TCP: a snapshot file (one region \"state\"), or --demo for the synthetic device with its workload")
        .argument("[snapshot]", "snapshot file to load into the source device, or - for stdin")
        .requiredOption("--to <host:port>", "the receiver (migstream receive --listen)")
        .option("--demo", "send the synthetic demo device, written to by its workload during the migration")
        .option("--device-id <id>", `compatibility id the receiver may require (default: "" for a snapshot, "${DEMO_DEVICE_ID}" with --demo)`),
      "256M",
    ),
  )
    .addHelpText(
      "after",
      "\nThe receiver validates the whole state before answering; the exit code says what it answered\n(2: corrupt or incomplete, 3: incompatible, 4: connection problem).\n\nExamples:\n  migstream send vm.state --to target:7400 --device-id nic-v2\n  migstream send --demo --size 64M --dirty-rate 8M/s --to 127.0.0.1:7400 --json",
    )
    .action(runSend);

  readerOptions(
    program
      .command("receive")
      .description("receive one live migration over TCP, validate it, and write the migrated state as a snapshot")
      .requiredOption("--listen <[host:]port>", "where to listen (loopback unless a host is given; port 0 picks a free port, printed on stderr)")
      .requiredOption("-o, --output <snapshot>", "snapshot file written once the state validated, or - for stdout"),
    "refuse streams for another device compatibility id (default: accept the stream's)",
  )
    .option("-f, --force", "replace an existing output file; write binary data even to a terminal")
    .option("--json", "print the report as JSON (on stderr as JSON Lines with -o -)")
    .option("-q, --quiet", "print nothing but errors")
    .option("--no-progress", "no progress line on stderr (also: NO_PROGRESS=1)")
    .addHelpText("after", OUTPUT_HELP)
    .addHelpText(
      "after",
      "\nNothing is written unless the whole stream arrived and validated: a dropped connection exits 2,\na stream for another device 3, and the output file is left as it was.\n\nExamples:\n  migstream receive --listen 7400 -o vm.state --device-id nic-v2\n  migstream receive --listen 0.0.0.0:7400 -o - --json | sha256sum",
    )
    .action(runReceive);
}
