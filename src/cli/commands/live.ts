// demo, send, receive: live migration over TCP or TLS. The demo and `send --demo` run the v2
// state machine (pre-copy rounds while a workload keeps writing, stop-copy, RESUMING validated on
// the target); `send <snapshot>` streams a file in one pass and `receive` decodes straight into
// its output file, answering the sender only once that file is stored.
import { closeSync, createReadStream, openSync, statSync } from "node:fs";
import { type Command, Option } from "commander";
import { reserveStaging } from "../../codec/staging-pool.js";
import { MigrationError } from "../../core/errors.js";
import type { DirtyTracking } from "../../device/device-model.js";
import type { PrecopyRoundReport } from "../../migration/precopy.js";
import type { MigrationDevice } from "../../migration/v2/migration-device.js";
import { ioError } from "../../node/atomic-file.js";
import { digestFile } from "../../node/files.js";
import { jobsOption, parseJobs, threadsFor } from "../jobs.js";
import {
  isLoopback,
  loadSecurity,
  receiveDevice,
  receiveFile,
  type ReceiveResult,
  type SecurityFiles,
  sendDevice,
  sendFile,
  type SendOptions,
  type SendResult,
  type TransportSecurity,
} from "../../node/tcp.js";
import {
  context,
  formatBytes,
  OUTPUT_HELP,
  type OutputPlan,
  openOutput,
  parseSize,
  planOutput,
  privateTempFile,
  Progress,
  type ReaderFlags,
  readerLimits,
  readerOptions,
  report,
  snapshotPath,
  toJson,
} from "../common.js";
import { headerJson, peakRss, round3 } from "../json.js";
import { migrationReportHtml } from "../report.js";
import { createSyntheticDevice, Workload } from "../synthetic-device.js";
import { gcPacer } from "../gc-pacer.js";
import { explainTls } from "../tls-failure.js";

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

/** --timeout <seconds>: a positive number (fractions allowed), in milliseconds. */
export function parseTimeout(text: string): number {
  const seconds = Number(text);
  if (!/^\s*\d+(\.\d+)?\s*$/.test(text) || !(seconds > 0) || seconds * 1000 > 2 ** 31 - 1) {
    throw new MigrationError("EINVAL", `invalid timeout ${JSON.stringify(text)} (expected seconds, e.g. 60 or 0.5)`);
  }
  return Math.max(1, Math.round(seconds * 1000));
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
    rounds: sent.rounds.map((r) => ({
      ...r,
      durationMs: round3(r.durationMs),
      dirtyRate: Math.round(r.dirtyRate),
      expectedDowntimeMs: round3(r.expectedDowntimeMs),
    })),
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

/**
 * Writes the HTML picture of a migration (--report) under the rules of every output: a regular
 * file atomically (an existing one only with -f, keeping its mode), a device or FIFO through.
 */
async function writeReport(plan: OutputPlan, sent: SendResult, flags: MigrateFlags, title: string, facts: (readonly [string, string])[]): Promise<void> {
  const out = await openOutput(plan);
  try {
    await out.write(new TextEncoder().encode(migrationReportHtml(sent, { title, thresholdBytes: parseSize(flags.threshold), facts })));
    await out.commit();
  } catch (error) {
    out.abort();
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
    // not read yet (asked only while a progress line is drawn). They are stream bytes, so the
    // total is the first answer, not the device's size.
    let initialTotal = 0;
    poll = setInterval(() => {
      if (count > 0 || !device.state.startsWith("PRE_COPY")) return clearInterval(poll);
      try {
        const { initialBytes } = device.precopyInfo();
        initialTotal = Math.max(initialTotal, initialBytes);
        progress.update(initialTotal - initialBytes, initialTotal);
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
  compress: "none" | "lz4";
  threshold: string;
  maxRounds: string;
  bandwidth?: string;
  json?: boolean;
  quiet?: boolean;
  progress?: boolean;
  report?: string;
  force?: boolean;
}

interface DemoFlags extends MigrateFlags {
  size: string;
  dirtyRate: string;
  seed: string;
  pageSize: string;
  deviceId?: string;
}

interface TransportFlags extends SecurityFiles {
  timeout: string;
  channels?: string;
}

interface SendFlags extends DemoFlags, TransportFlags {
  to: string;
  demo?: boolean;
  jobs?: string;
}

interface ReceiveFlags extends ReaderFlags, TransportFlags {
  listen: string;
  authTimeout: string;
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
    .addOption(
      new Option("--compress <codec>", "page compression: lz4 sends runs of raw pages LZ4-compressed when smaller (format 1.1)")
        .choices(["none", "lz4"])
        .default("none"),
    )
    .option("--json", "print the report as JSON on stdout")
    .option("-q, --quiet", "print nothing but errors")
    .option("--report <file.html>", "write the migration as an HTML page: rounds charted, summary table (self-contained, no network)")
    .option("-f, --force", "replace an existing --report file")
    .option("--no-progress", "no progress line on stderr (also: NO_PROGRESS=1)");
}

function demoOptions(command: Command, sizeDefault: string): Command {
  return command
    .option("--size <bytes>", "size of the synthetic device", sizeDefault)
    .option("--dirty-rate <rate>", "workload writes: pages/s (4096, 4096p) or bytes/s (16M, 16MiB/s); 0 for none", "4096")
    .option("--seed <n>", "seed of the synthetic content and workload", "1")
    .option("--page-size <bytes>", "page size", "4096");
}

/** --timeout and the TLS options, shared by send and receive. */
function transportOptions(command: Command): Command {
  return command
    .option("--timeout <seconds>", "give up after this long without progress (at least 64 KiB moving)", "60")
    .option("--tls-cert <pem>", "this end's certificate (TLS with --tls-key and --tls-ca; the peer must present one signed by the CA)")
    .option("--tls-key <pem>", "this end's private key")
    .option("--tls-ca <pem>", "the CA that signed the peer's certificate")
    .option("--tls-psk <file>", "TLS with pre-shared keys, QEMU tls-creds-psk format (identity:hexkey lines)")
    .option("--verbose", "with a TLS failure's cause, print the TLS library's own text too")
    .option("--channels <n>", "connections per migration, 1-16 (send: how many to open, default 1; receive: the most a sender may open, default 8)");
}

function transport(flags: TransportFlags): { timeoutMs: number; tls?: TransportSecurity; channels?: number } {
  const timeoutMs = parseTimeout(flags.timeout);
  const tls = loadSecurity(flags);
  context.tls = tls === undefined ? undefined : "psk" in tls ? "psk" : "certificates";
  const channels = flags.channels === undefined ? undefined : parseCount(flags.channels, "channel count");
  return { timeoutMs, ...(tls ? { tls } : {}), ...(channels !== undefined ? { channels } : {}) };
}

const DEMO_DEVICE_ID = "migstream-demo";

/** Dropped connections `receive` names on stderr before it only counts them. */
const SHOWN_DROPS = 20;

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

/**
 * --report's file is checked before the migration, as every output: its directory exists, an
 * existing file needs -f, and it is not the snapshot being sent.
 */
function checkReport(flags: MigrateFlags, input?: string): OutputPlan | undefined {
  return flags.report === undefined ? undefined : planOutput(flags.report, { force: flags.force === true, inputs: [input], flag: "--report" });
}

async function runDemo(flags: DemoFlags): Promise<void> {
  const reportPlan = checkReport(flags);
  const started = performance.now();
  const { device, workload, rate } = demoDevice(flags);
  // The target side prepares its resume staging before the migration, as a target VMM has its
  // guest memory before pages arrive: the decode then writes into memory already touched.
  reserveStaging(device.model.layout.map((r) => r.size));
  const createdMs = performance.now() - started;
  let target: ReceiveResult | undefined;
  // Ends the receiver if the sender fails before connecting: a listening server would keep
  // the process alive.
  const receiver = new AbortController();
  try {
    let listening!: (port: number) => void;
    const bound = new Promise<number>((resolve) => (listening = resolve));
    const receiving = receiveDevice({
      port: 0,
      host: "127.0.0.1",
      final: "STOP",
      signal: receiver.signal,
      onListening: (a) => listening(a.port),
      // Both ends in one process: collect the receiving end's read buffers as it goes (gc-pacer.ts).
      onProgress: gcPacer(),
    });
    // The receiver may fail before the sender is done; keep its rejection for later.
    receiving.catch(() => undefined);
    const port = await Promise.race([bound, receiving.then(() => -1)]);
    workload.start();
    device.compress = flags.compress;
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
      maxRssBytes: peakRss(),
    };
    const text = [
      `demo device ${deviceText(device)}`,
      `workload    ${Math.round(rate)} pages/s: ${workload.stats.writes} writes (${formatBytes(workload.stats.bytes)}) during the migration, stopped at ${workload.stats.stoppedAt ?? "(not stopped)"}`,
      `transport   tcp 127.0.0.1:${port}`,
      ...migrationText(sent),
      identical
        ? `verified    source and target states are identical (xxh3 ${hex(target.digest)})`
        : `MISMATCH    source ${hex(sourceDigest)} != target ${hex(target.digest)}`,
      `time        ${(totalMs / 1000).toFixed(2)} s in all (${(createdMs / 1000).toFixed(2)} s creating the device and the target's staging)`,
    ].join("\n");
    if (reportPlan) {
      await writeReport(reportPlan, sent, flags, `migstream demo: ${deviceText(device)}`, [
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

async function runSend(snapshot: string | undefined, flags: SendFlags): Promise<void> {
  if ((snapshot === undefined) === (flags.demo !== true)) {
    throw new MigrationError("EINVAL", "send needs a snapshot file or --demo (not both)");
  }
  const { host, port } = parseEndpoint(flags.to);
  const reportPlan = checkReport(flags, snapshot);
  const security = transport(flags);
  parseJobs(flags, undefined);
  if (flags.demo && flags.jobs !== undefined) {
    throw new MigrationError("EINVAL", "--jobs applies to a snapshot: the demo device is encoded round by round, on one thread");
  }
  if (snapshot !== undefined) {
    // "-": the snapshot comes on stdin (spooled to a private temporary file, removed at the end).
    const spooled = await snapshotPath(snapshot, "snapshot");
    try {
      return await sendSnapshot(spooled.path, snapshot, host, port, security, flags, reportPlan);
    } finally {
      spooled.cleanup();
    }
  }
  const demo = demoDevice(flags);
  const device = demo.device;
  try {
    device.compress = flags.compress;
    demo.workload.start();
    let sent: SendResult;
    const progress = migrationProgress("send", flags, device);
    try {
      sent = await sendDevice(device, { ...sendOptions(flags), ...security, host, port, onRound: progress.onRound });
    } finally {
      progress.done();
      demo.workload.stop();
    }
    const value = {
      to: `${host}:${port}`,
      tls: tlsKind(security.tls),
      channels: security.channels ?? 1,
      device: deviceJson(device),
      workload: { pagesPerSecond: demo.rate, writes: demo.workload.stats.writes, bytes: demo.workload.stats.bytes },
      ...migrationJson(sent),
      digest: hex(sent.digest),
      accepted: true,
      maxRssBytes: peakRss(),
    };
    const text = [
      `sent demo device ${deviceText(device)} to ${host}:${port}`,
      ...migrationText(sent),
      `accepted    the receiver stored the state (xxh3 ${hex(sent.digest)})`,
    ].join("\n");
    if (reportPlan) {
      await writeReport(reportPlan, sent, flags, `migstream send --demo to ${host}:${port}`, [
        ["device", deviceText(device)],
        ["receiver", `${host}:${port}, validated (xxh3 ${hex(sent.digest)})`],
      ]);
    }
    report(value, text, flags);
  } finally {
    device.free();
  }
}

const tlsKind = (tls: TransportSecurity | undefined): string => (!tls ? "none" : "psk" in tls ? "psk" : "certificates");

/**
 * A snapshot file goes out as one full stream read with positional I/O, window by window: no
 * device is built, memory stays a few windows. Connecting comes first, so nobody listening
 * fails before the file is read.
 */
async function sendSnapshot(
  snapshot: string,
  shown: string,
  host: string,
  port: number,
  security: ReturnType<typeof transport>,
  flags: SendFlags,
  reportPlan: OutputPlan | undefined,
): Promise<void> {
  let size: number;
  try {
    size = statSync(snapshot).size;
  } catch (cause) {
    throw ioError(`cannot open ${shown}`, cause);
  }
  if (size === 0) throw new MigrationError("EINVAL", `${shown} is empty: nothing to migrate`);
  const pageSize = parseSize(flags.pageSize);
  const progress = new Progress("send", flags);
  // One thread unless asked (src/cli/jobs.ts).
  const threads = threadsFor(flags, parseJobs(flags, size, false));
  let sent: Awaited<ReturnType<typeof sendFile>>;
  try {
    sent = await sendFile(snapshot, {
      host,
      port,
      ...security,
      pageSize,
      deviceId: flags.deviceId ?? "",
      ...(flags.compress ? { compress: flags.compress } : {}),
      jobs: threads.jobs,
      onnote: threads.onnote,
      onprogress: (done, total) => progress.update(done, total),
    });
  } finally {
    progress.done();
  }
  const { summary, digest, durationMs } = sent;
  const pages = Math.ceil(size / pageSize);
  const throughput = summary.bytes / Math.max(durationMs / 1000, 1e-6);
  // A snapshot does not change: one pass, no rounds to converge, no downtime to measure.
  const migration: SendResult = {
    rounds: [{ round: 0, pages, bytes: summary.bytes, dirtyBytes: 0, dirtyRate: 0, expectedDowntimeMs: 0, durationMs: round3(durationMs) }],
    converged: "no-precopy",
    initialDataSent: true,
    bytes: summary.bytes,
    stopCopyBytes: 0,
    downtimeMs: 0,
    durationMs: round3(durationMs),
    throughput: Math.round(throughput),
    digest,
  };
  const value = {
    to: `${host}:${port}`,
    tls: tlsKind(security.tls),
    channels: security.channels ?? 1,
    jobs: threads.used(),
    device: { size, pageSize, tracking: null, deviceId: flags.deviceId ?? "", regions: [{ name: "state", size }] },
    ...migrationJson(migration),
    converged: "snapshot",
    digest: hex(digest),
    accepted: true,
    maxRssBytes: peakRss(),
  };
  const text = [
    `sent ${shown === "-" ? "stdin" : shown} (${formatBytes(size)}, page size ${pageSize}) to ${host}:${port}${security.tls ? ` over TLS (${tlsKind(security.tls)})` : ""}`,
    `total       ${formatBytes(summary.bytes)} in ${(durationMs / 1000).toFixed(2)} s (${formatBytes(throughput)}/s)`,
    `accepted    the receiver stored the state (xxh3 ${hex(digest)})`,
  ].join("\n");
  if (reportPlan) {
    await writeReport(reportPlan, migration, flags, `migstream send ${shown} to ${host}:${port}`, [
      ["snapshot", `${shown === "-" ? "stdin" : shown}, ${formatBytes(size)}, page size ${pageSize}`],
      ["receiver", `${host}:${port}, stored (xxh3 ${hex(digest)})`],
    ]);
  }
  report(value, text, flags);
}

async function runReceive(flags: ReceiveFlags): Promise<void> {
  const { host, port } = parseEndpoint(flags.listen);
  const security = transport(flags);
  // Checked before listening: an existing file needs -f, a terminal takes no binary data without
  // it, the output's directory must exist and be writable.
  const plan = planOutput(flags.output, { force: flags.force === true });
  const toStdout = plan.kind === "stdout";
  if (!security.tls && !isLoopback(host)) {
    process.stderr.write(
      `migstream: warning: listening on ${host} without TLS: anyone who can reach the port can push a state, and the state crosses the network in clear (use --tls-cert/--tls-key/--tls-ca or --tls-psk)\n`,
    );
  }
  // A regular file: the stream is decoded straight into a temporary file beside it, renamed once
  // stored. Anything else (stdout, a device, a FIFO, a socket) is written through: the state is
  // staged in a private temporary file and copied out once stored, before the verdict.
  const staging = plan.kind === "file" ? undefined : privateTempFile("received.state");
  const path = staging ? staging.path : plan.target;
  const progress = new Progress("receive", flags);
  let dropped = 0;
  try {
    const received = await receiveFile(path, {
      host,
      port,
      ...security,
      authTimeoutMs: parseTimeout(flags.authTimeout),
      ...(flags.deviceId !== undefined ? { deviceId: flags.deviceId } : {}),
      ...readerLimits(flags),
      ...(staging ? { deliver: (stored: string) => copyOut(stored, plan) } : {}),
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
      onDropped: (peer, reason) => {
        // A flood of connections is dropped by the thousand: the first few are named, then counted.
        dropped++;
        if (flags.quiet || dropped > SHOWN_DROPS) return;
        // A TLS failure said as its cause, with a hint; OpenSSL's text only with --verbose.
        const tls = security.tls || /starts like a TLS handshake/.test(reason.message) ? explainTls(reason.message, "receiver") : undefined;
        const why = tls ? `${tls.cause}${context.verbose ? ` (${reason.message.trim()})` : ""}\nhint: ${tls.hint}` : reason.message;
        process.stderr.write(`migstream: dropped ${peer.host}:${peer.port} before it owned the migration: ${why}\n`);
        if (dropped === SHOWN_DROPS) process.stderr.write("migstream: further dropped connections are counted, not shown\n");
      },
      onProgress: (bytes) => progress.update(bytes),
    });
    progress.done();
    if (dropped > SHOWN_DROPS && !flags.quiet) process.stderr.write(`migstream: ${dropped} connections dropped before one owned the migration\n`);
    const h = received.header;
    // For the report: the stored state's identity (the stream's own checks already passed).
    const digest = fileDigest(staging ? staging.path : plan.target, h.totalSize);
    const value = {
      output: flags.output,
      from: `${received.peer.host}:${received.peer.port}`,
      tls: tlsKind(security.tls),
      channels: received.channels,
      bytes: received.bytes,
      stateBytes: h.totalSize,
      durationMs: round3(received.durationMs),
      throughput: Math.round(received.bytes / Math.max(received.durationMs / 1000, 1e-6)),
      header: headerJson(h),
      digest: hex(digest),
      maxRssBytes: peakRss(),
    };
    const text = `received ${formatBytes(h.totalSize)} of state (${formatBytes(received.bytes)} of stream in ${(received.durationMs / 1000).toFixed(2)} s) -> ${toStdout ? "stdout" : flags.output}: validated and stored (xxh3 ${hex(digest)})`;
    report(value, text, { ...flags, dataOnStdout: toStdout });
  } finally {
    progress.done();
    staging?.cleanup();
  }
}

/** Copies a stored state to an output that is not a regular file (stdout, a device, a FIFO). */
async function copyOut(path: string, plan: OutputPlan): Promise<void> {
  const out = await openOutput(plan);
  try {
    for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) await out.write(chunk as Buffer);
    await out.commit();
  } catch (error) {
    out.abort();
    throw error;
  }
}

function fileDigest(path: string, size: number): bigint {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch (cause) {
    throw ioError(`cannot read ${path}`, cause);
  }
  try {
    return digestFile(fd, size, path);
  } finally {
    closeSync(fd);
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
      "\nExamples:\n  migstream demo\n  migstream demo --size 256M --dirty-rate 64M/s --tracking shadow\n  migstream demo --size 16M --json | jq .verification",
    )
    .action(runDemo);

  transportOptions(
    migrateOptions(
      demoOptions(
        jobsOption(program.command("send"), false)
          .description(
            'live-migrate a device to a receiver over TCP: a snapshot file (one region "state"), or --demo for the synthetic device with its workload',
          )
          .argument("[snapshot]", 'snapshot file to send (one region "state", read in one pass after connecting), or - for stdin')
          .requiredOption("--to <host:port>", "the receiver (migstream receive --listen)")
          .option("--demo", "send the synthetic demo device, written to by its workload during the migration")
          .option("--device-id <id>", `compatibility id the receiver may require (default: "" for a snapshot, "${DEMO_DEVICE_ID}" with --demo)`),
        "256M",
      ),
    ),
  )
    .addHelpText(
      "after",
      "\nExit 0 only once the receiver answered that it validated and stored the whole state; otherwise\nthe exit code says what went wrong (2: corrupt or incomplete, 3: incompatible, 4: connection,\ntimeout or the receiver's storage). A snapshot is read in one pass after connecting.\n\nExamples:\n  migstream send vm.state --to target:7400 --device-id nic-v2\n  migstream send vm.state --to target:7400 --tls-psk keys.psk\n  migstream send --demo --size 64M --dirty-rate 8M/s --to target:7400 --json\n\nEach example sends to the matching example of `migstream receive --help`. Certificates instead\nof a pre-shared key: --tls-cert src.pem --tls-key src.key --tls-ca ca.pem",
    )
    .action(runSend);

  transportOptions(
    readerOptions(
      program
        .command("receive")
        .description("receive one live migration over TCP, validate it, and write the migrated state as a snapshot")
        .requiredOption("--listen <[host:]port>", "where to listen (loopback unless a host is given; port 0 picks a free port, printed on stderr)")
        .requiredOption("-o, --output <snapshot>", "snapshot file written once the state validated, or - for stdout"),
      "refuse streams for another device compatibility id (default: accept the stream's)",
    ),
  )
    .option("--auth-timeout <seconds>", "time a connection has to authenticate (TLS) and send a valid header, from its admission", "10")
    .option("-f, --force", "replace an existing output file; write binary data even to a terminal")
    .option("--json", "print the report as JSON (on stderr as JSON Lines with -o -)")
    .option("-q, --quiet", "print nothing but errors")
    .option("--no-progress", "no progress line on stderr (also: NO_PROGRESS=1)")
    .addHelpText("after", OUTPUT_HELP)
    .addHelpText(
      "after",
      "\nNothing is written unless the whole stream arrived and validated: a dropped connection exits 2,\na stream for another device 3, and the output file is left as it was. Peers that do not\nauthenticate and send a valid header within --auth-timeout are dropped while receive keeps\nlistening; when 64 are authenticating at once (32 from one address), newcomers wait unread and\none that had 0.5 s is dropped at random to make room, so no flood of connections locks the\nsender out. --timeout applies once a peer owns the migration.\n\nExamples:\n  migstream receive --listen 7400 -o vm.state --device-id nic-v2\n  migstream receive --listen 0.0.0.0:7400 -o vm.state --tls-psk keys.psk\n  migstream receive --listen 7400 -o - | sha256sum",
    )
    .action(runReceive);
}
