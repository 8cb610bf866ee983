// QEMU migration streams on the command line: inspect, verify and decode recognise one by its
// magic (files), convert turns one into a migstream stream and back, encode --template writes a
// QEMU stream with a snapshot's RAM, diff and apply take QEMU streams where they take snapshots.
// The output rules are the other commands' (common.ts): temporary name, verified, renamed.
import { statSync } from "node:fs";
import type { Command } from "commander";
import { decodeToFile } from "../../node/files.js";
import { MigrationError } from "../../core/errors.js";
import { isQemuStream, type QemuStreamSummary } from "../../qemu/reader.js";
import {
  type BlockSource,
  concatenatedSources,
  decodeMigstreamOfQemu,
  decodeQemuToFile,
  encodeQemuAsMigstream,
  inspectQemuStream,
  isQemuFile,
  writeQemuStream,
} from "../../node/qemu-files.js";
import type { QemuDeviceState } from "../../qemu/reader.js";
import {
  errorJson,
  formatBytes,
  inputSize,
  OUTPUT_HELP,
  type Output,
  type OutputPlan,
  openOutput,
  openSource,
  planOutput,
  privateTempFile,
  Progress,
  progressOption,
  Reported,
  report,
  snapshotPath,
} from "../common.js";
import { resources } from "../json.js";

/**
 * Is this input a QEMU migration stream (its magic, "QEVM")? A file is read at its start; stdin
 * ("-") is peeked at: its first bytes are read and pushed back, so whichever command reads it
 * next gets the whole stream.
 */
export async function isQemuInput(path: string | undefined): Promise<boolean> {
  if (path === undefined) return false;
  if (path !== "-") return isQemuFile(path);
  const stdin = process.stdin;
  if (stdin.isTTY) return false;
  // A pipe may deliver fewer than the four bytes of the magic first: read until there are four.
  const parts: Buffer[] = [];
  let have = 0;
  while (have < 4) {
    const chunk = await new Promise<Buffer | null>((resolve, reject) => {
      const tryRead = (): void => {
        const data = stdin.read() as Buffer | null;
        if (data !== null) {
          cleanup();
          resolve(data);
        }
      };
      const onEnd = (): void => {
        cleanup();
        resolve(null);
      };
      const onError = (error: Error): void => {
        cleanup();
        reject(error);
      };
      const cleanup = (): void => {
        stdin.off("readable", tryRead);
        stdin.off("end", onEnd);
        stdin.off("error", onError);
      };
      stdin.on("readable", tryRead);
      stdin.once("end", onEnd);
      stdin.once("error", onError);
      tryRead();
    });
    if (chunk === null) break;
    parts.push(chunk);
    have += chunk.length;
  }
  const head = Buffer.concat(parts);
  if (head.length > 0) stdin.unshift(head);
  return isQemuStream(head);
}

interface Flags {
  json?: boolean;
  quiet?: boolean;
  progress?: boolean;
  force?: boolean;
  output?: string;
  region?: string;
}

/** The --json fields of a QEMU stream, in the common schema (docs/json-schema.md). */
function summaryJson(s: QemuStreamSummary): Record<string, unknown> {
  const stateBytes = s.ramBlocks.reduce((n, b) => n + b.size, 0);
  return {
    format: "qemu",
    machine: s.machine,
    ramBlocks: s.ramBlocks,
    stateBytes,
    bytes: s.bytes,
    ratio: stateBytes > 0 ? s.bytes / stateBytes : null,
    pages: s.pages,
    iterations: s.iterations,
    sections: s.sections,
  };
}

async function inspectFile(stream: string, command: string, flags: Flags) {
  const progress = new Progress(command, flags);
  const total = inputSize(stream);
  try {
    return await inspectQemuStream(openSource(stream), stream, { onprogress: (bytes) => progress.update(bytes, total) });
  } finally {
    progress.done();
  }
}

export async function qemuInspect(stream: string, flags: Flags): Promise<void> {
  const started = performance.now();
  const { summary, problem } = await inspectFile(stream, "inspect", flags);
  const stateBytes = summary.ramBlocks.reduce((n, b) => n + b.size, 0);
  if (flags.json) {
    report(
      { ...summaryJson(summary), valid: problem === undefined, ...(problem ? { error: errorJson(problem) } : {}), ...resources(started, stateBytes) },
      "",
      flags,
    );
  } else {
    const lines = [
      `format      QEMU migration stream (file version 3), machine ${summary.machine || "(none)"}`,
      `RAM         ${formatBytes(stateBytes)} in ${summary.ramBlocks.length} block(s)`,
      ...summary.ramBlocks.map((b) => `  block     ${b.name.padEnd(24)} ${formatBytes(b.size)}`),
      `pages       normal ${summary.pages.normal}, zero ${summary.pages.zero}, xbzrle ${summary.pages.xbzrle}; ${summary.iterations} iteration(s) after the setup`,
      `sections    ${summary.sections.length} in ${formatBytes(summary.bytes)}`,
      ...summary.sections.map((s) => `  ${s.name.padEnd(32)} instance ${s.instance} version ${s.version}  ${formatBytes(s.bytes)}`),
      problem ? `problem     ${problem.code}: ${problem.message}` : "valid       yes",
    ];
    process.stdout.write(`${lines.join("\n")}\n`);
  }
  if (problem) throw new Reported(problem);
}

export async function qemuVerify(stream: string, flags: Flags): Promise<void> {
  const started = performance.now();
  const { summary, problem } = await inspectFile(stream, "verify", flags);
  if (problem) throw problem;
  const stateBytes = summary.ramBlocks.reduce((n, b) => n + b.size, 0);
  report(
    { valid: true, ...summaryJson(summary), ...resources(started, stateBytes) },
    `valid: ${formatBytes(summary.bytes)} of QEMU stream for ${formatBytes(stateBytes)} of RAM (${summary.machine})`,
    flags,
  );
}

/** Writes `produce`'s output to the planned output: a file is checked by `verify` before it is renamed. */
async function toOutput(plan: OutputPlan, produce: (out: Output) => Promise<void>, verify?: (path: string) => Promise<void>): Promise<void> {
  const out = await openOutput(plan);
  try {
    await produce(out);
    // Checked once every chunk is in the file.
    const tempPath = await out.written();
    if (verify && tempPath !== undefined) await verify(tempPath);
    await out.commit();
  } catch (error) {
    out.abort();
    throw error;
  }
}

/** The written QEMU stream is read back in full before it replaces the output. */
async function verifyQemuOutput(path: string): Promise<void> {
  const { problem } = await inspectQemuStream(openSource(path), path);
  if (problem) throw new MigrationError("EIO", `written QEMU stream failed verification: ${problem.message}`);
}

/** Copies a staged file to an output that is not a regular file (stdout, a FIFO). */
async function copyTo(out: Output, path: string): Promise<void> {
  for await (const chunk of openSource(path)) await out.write(chunk);
}

export async function qemuDecode(stream: string, flags: Flags & { output: string }): Promise<void> {
  const started = performance.now();
  const plan = planOutput(flags.output, { force: flags.force === true, inputs: [stream] });
  const progress = new Progress("decode", flags);
  const total = inputSize(stream);
  const staged = plan.kind === "file" ? undefined : privateTempFile("decoded.ram");
  try {
    const result = await decodeQemuToFile(openSource(stream), staged?.path ?? plan.target, stream, {
      ...(flags.region !== undefined ? { region: flags.region } : {}),
      onprogress: (bytes) => progress.update(bytes, total),
    });
    progress.done();
    if (staged) await toOutput(plan, (out) => copyTo(out, staged.path));
    report(
      {
        output: flags.output,
        ...summaryJson(result.summary),
        ...(flags.region !== undefined ? { region: flags.region } : {}),
        outputBytes: result.size,
        ...resources(started, result.size),
      },
      `decoded ${formatBytes(result.size)} of RAM${flags.region !== undefined ? ` (block ${flags.region})` : ""} from ${formatBytes(result.summary.bytes)} of QEMU stream -> ${flags.output === "-" ? "stdout" : flags.output}: verified`,
      { ...flags, dataOnStdout: plan.kind === "stdout" },
    );
  } finally {
    progress.done();
    staged?.cleanup();
  }
}

/** A QEMU stream's RAM in a private temporary file (removed on every ending), and its device state. */
async function decodeToTemp(stream: string, name: string): Promise<{ path: string; state: QemuDeviceState; summary: QemuStreamSummary; cleanup: () => void }> {
  const temp = privateTempFile(name);
  try {
    const { state, summary } = await decodeQemuToFile(openSource(stream), temp.path, stream);
    return { path: temp.path, state, summary, cleanup: temp.cleanup };
  } catch (error) {
    temp.cleanup();
    throw error;
  }
}

/** convert: QEMU to migstream (regions named like the blocks, the rest in the config blob) and back. */
export async function qemuConvert(input: string, flags: Flags & { output: string }): Promise<void> {
  const started = performance.now();
  const plan = planOutput(flags.output, { force: flags.force === true, inputs: [input] });
  if (await isQemuInput(input)) {
    const ram = await decodeToTemp(input, "qemu.ram");
    try {
      let written = 0;
      let stateBytes = 0;
      await toOutput(plan, async (out) => {
        const summary = await encodeQemuAsMigstream(ram.path, ram.state, (chunk) => out.write(chunk));
        written = summary.bytes;
        stateBytes = summary.stateBytes;
      });
      report(
        { output: flags.output, from: "qemu", to: "migstream", bytes: written, stateBytes, ramBlocks: ram.state.blocks, ...resources(started, stateBytes) },
        `converted the QEMU stream (${formatBytes(ram.summary.bytes)}) into a migstream stream of ${formatBytes(written)} -> ${flags.output === "-" ? "stdout" : flags.output}`,
        { ...flags, dataOnStdout: plan.kind === "stdout" },
      );
    } finally {
      ram.cleanup();
    }
    return;
  }
  const temp = privateTempFile("migstream.ram");
  try {
    const { state } = await decodeMigstreamOfQemu(openSource(input), temp.path);
    let written = 0;
    await toOutput(
      plan,
      async (out) => {
        written = (await writeQemuStream(state, concatenatedSources(temp.path, state.blocks), (chunk) => out.write(chunk))).bytes;
      },
      verifyQemuOutput,
    );
    const stateBytes = state.blocks.reduce((n, b) => n + b.size, 0);
    report(
      { output: flags.output, from: "migstream", to: "qemu", bytes: written, stateBytes, ramBlocks: state.blocks, ...resources(started, stateBytes) },
      `converted the migstream stream into a QEMU stream of ${formatBytes(written)} -> ${flags.output === "-" ? "stdout" : flags.output}`,
      { ...flags, dataOnStdout: plan.kind === "stdout" },
    );
  } finally {
    temp.cleanup();
  }
}

/** encode --template: a QEMU stream with the template's device state and the snapshot's RAM. */
export async function qemuEncodeTemplate(snapshot: string, flags: Flags & { output: string; template: string }): Promise<void> {
  const started = performance.now();
  const plan = planOutput(flags.output, { force: flags.force === true, inputs: [snapshot, flags.template] });
  const input = await snapshotPath(snapshot, "snapshot");
  const template = await decodeToTemp(flags.template, "template.ram");
  try {
    const blocks = template.state.blocks;
    const size = statSync(input.path).size;
    let sources: BlockSource[];
    if (flags.region !== undefined) {
      const index = blocks.findIndex((b) => b.name === flags.region);
      if (index < 0)
        throw new MigrationError(
          "EINVAL",
          `no RAM block ${JSON.stringify(flags.region)} in ${flags.template} (blocks: ${blocks.map((b) => b.name).join(", ")})`,
        );
      if (size !== blocks[index]!.size)
        throw new MigrationError("ENODEV", `${snapshot} is ${size} bytes, block ${flags.region} of the template ${blocks[index]!.size}`);
      sources = concatenatedSources(template.path, blocks).map((s, i) => (i === index ? { path: input.path, offset: 0 } : s));
    } else {
      const total = blocks.reduce((n, b) => n + b.size, 0);
      if (size !== total)
        throw new MigrationError("ENODEV", `${snapshot} is ${size} bytes, the template's RAM ${total} (all blocks; give --region <block> for one)`);
      sources = concatenatedSources(input.path, blocks);
    }
    let summary = { bytes: 0, pages: { normal: 0, zero: 0 } };
    await toOutput(plan, async (out) => void (summary = await writeQemuStream(template.state, sources, (chunk) => out.write(chunk))), verifyQemuOutput);
    const stateBytes = blocks.reduce((n, b) => n + b.size, 0);
    report(
      { output: flags.output, format: "qemu", bytes: summary.bytes, stateBytes, pages: summary.pages, ramBlocks: blocks, ...resources(started, stateBytes) },
      `encoded ${formatBytes(flags.region !== undefined ? size : stateBytes)} of RAM into a QEMU stream of ${formatBytes(summary.bytes)} with the device state of ${flags.template} -> ${flags.output === "-" ? "stdout" : flags.output}`,
      { ...flags, dataOnStdout: plan.kind === "stdout" },
    );
  } finally {
    template.cleanup();
    input.cleanup();
  }
}

/**
 * diff of two QEMU streams: their RAM (blocks concatenated) as the old and new snapshots of the
 * ordinary diff, which `run` is.
 */
export async function qemuDiff(oldPath: string, newPath: string, run: (oldRam: string, newRam: string) => Promise<void>): Promise<void> {
  const old = (await isQemuInput(oldPath)) ? await decodeToTemp(oldPath, "old.ram") : undefined;
  try {
    const next = (await isQemuInput(newPath)) ? await decodeToTemp(newPath, "new.ram") : undefined;
    try {
      await run(old?.path ?? oldPath, next?.path ?? newPath);
    } finally {
      next?.cleanup();
    }
  } finally {
    old?.cleanup();
  }
}

/** apply onto a QEMU stream: its RAM is the base, and the result is a QEMU stream again. */
export async function qemuApply(base: string, stream: string, flags: Flags & { output: string }): Promise<void> {
  const started = performance.now();
  const plan = planOutput(flags.output, { force: flags.force === true, inputs: [base, stream] });
  const old = await decodeToTemp(base, "base.ram");
  const next = privateTempFile("applied.ram");
  try {
    const decoded = await decodeToFile(openSource(stream), next.path, { base: old.path, maxStateSize: 64 * 2 ** 30 });
    const stateBytes = old.state.blocks.reduce((n, b) => n + b.size, 0);
    if (decoded.header?.totalSize !== stateBytes)
      throw new MigrationError("ENODEV", `the stream's state is ${decoded.header?.totalSize} bytes, the RAM of ${base} ${stateBytes}`);
    let bytes = 0;
    await toOutput(
      plan,
      async (out) => void (bytes = (await writeQemuStream(old.state, concatenatedSources(next.path, old.state.blocks), (c) => out.write(c))).bytes),
      verifyQemuOutput,
    );
    report(
      { output: flags.output, format: "qemu", bytes, stateBytes, ...resources(started, stateBytes) },
      `applied ${formatBytes(decoded.bytes)} of stream onto the RAM of ${base} -> QEMU stream ${flags.output === "-" ? "stdout" : flags.output}`,
      { ...flags, dataOnStdout: plan.kind === "stdout" },
    );
  } finally {
    next.cleanup();
    old.cleanup();
  }
}

export function registerQemuCommands(program: Command): void {
  progressOption(
    program
      .command("convert")
      .description("convert a QEMU migration stream into a migstream stream, or one made that way back into a QEMU stream")
      .argument("<in>", "QEMU stream file, or migstream stream (file or - for stdin)")
      .requiredOption("-o, --output <stream>", "output stream file, or - for stdout")
      .option("-f, --force", "replace an existing output file; write binary data even to a terminal")
      .option("--json", "print the summary as JSON")
      .option("-q, --quiet", "print nothing but errors"),
  )
    .addHelpText(
      "after",
      `\nA QEMU stream's RAM blocks become regions named like them; its configuration, device sections\nand VM description travel in the config blob, so converting back gives a stream QEMU loads.\n${OUTPUT_HELP}\n\nExamples:\n  migstream convert vm.qemu -o vm.mig\n  migstream convert vm.mig -o vm.qemu`,
    )
    .action((input: string, flags: Flags & { output: string }) => qemuConvert(input, flags));
}
