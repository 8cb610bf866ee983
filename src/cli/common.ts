// What every command shares: exit codes, inputs and outputs ("-" is stdin/stdout), reports on
// stdout (--json) or stderr, and progress on stderr when it is a terminal.
import { createReadStream, createWriteStream, mkdtempSync, rmSync } from "node:fs";
import { once } from "node:events";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pipeline } from "node:stream/promises";
import type { Command } from "commander";
import { MigrationError } from "../core/errors.js";
import { AtomicFile, onInterruptCleanup } from "../node/atomic-file.js";

export const EXIT = { ok: 0, usage: 1, corrupt: 2, incompatible: 3, io: 4, interrupted: 130 } as const;

/** The exit code for an error: the CLI contract (README, "Command line"; docs/ARCHITECTURE.md, "Design rules"). */
export function exitCodeFor(error: unknown): number {
  if (error instanceof MigrationError) {
    switch (error.code) {
      case "EBADMSG":
      case "ENODATA":
      case "E2BIG":
        return EXIT.corrupt;
      case "EPROTONOSUPPORT":
      case "ENODEV":
      case "ESTALE":
        return EXIT.incompatible;
      case "EINVAL":
        return EXIT.usage;
      case "ECANCELED":
        return EXIT.interrupted;
      default:
        return EXIT.io;
    }
  }
  return EXIT.io;
}

/** One line for stderr: the problem, with its record index and byte offset when known. */
export function describeError(error: unknown): string {
  if (error instanceof MigrationError) {
    const where: string[] = [];
    if (error.recordIndex !== undefined) where.push(`record ${error.recordIndex}`);
    if (error.byteOffset !== undefined) where.push(`byte offset ${error.byteOffset}`);
    const suffix = where.length > 0 && !error.message.includes("byte") ? ` (${where.join(", ")})` : "";
    return `migstream: ${error.code}: ${error.message}${suffix}`;
  }
  if (error instanceof Error) return `migstream: ${error.message}`;
  return `migstream: ${String(error)}`;
}

/** JSON-friendly copy of an error. */
export function errorJson(error: MigrationError): Record<string, unknown> {
  return {
    code: error.code,
    message: error.message,
    ...(error.recordIndex !== undefined ? { recordIndex: error.recordIndex } : {}),
    ...(error.byteOffset !== undefined ? { byteOffset: error.byteOffset } : {}),
  };
}

/** Stream bytes from a file or stdin ("-"). */
export function openSource(path: string): AsyncIterable<Uint8Array> {
  if (path === "-") return process.stdin;
  return createReadStream(path, { highWaterMark: 1 << 20 });
}

/**
 * A path for a snapshot given as a file or "-": stdin is spooled to a temporary file first,
 * so that encoding can read it with positional I/O in bounded memory.
 */
export async function snapshotPath(path: string): Promise<{ path: string; cleanup: () => void }> {
  if (path !== "-") return { path, cleanup: () => undefined };
  const dir = mkdtempSync(join(tmpdir(), "migstream-"));
  const spooled = join(dir, "stdin.snapshot");
  const cleanup = onInterruptCleanup(() => rmSync(dir, { recursive: true, force: true }));
  try {
    await pipeline(process.stdin, createWriteStream(spooled));
  } catch (error) {
    cleanup();
    throw error;
  }
  return { path: spooled, cleanup };
}

/** A sequential output: a file written atomically, or stdout. */
export interface Output {
  write(chunk: Uint8Array): Promise<void>;
  /** The temporary file's path (files only), for a verification pass before commit. */
  readonly tempPath: string | undefined;
  commit(): Promise<void>;
  abort(): void;
}

export function openOutput(path: string, force: boolean): Output {
  if (path === "-") {
    if (process.stdout.isTTY && !force) {
      throw new MigrationError("EINVAL", "refusing to write binary data to a terminal (use -o FILE, a pipe, or --force)");
    }
    return {
      tempPath: undefined,
      async write(chunk) {
        if (!process.stdout.write(chunk)) await once(process.stdout, "drain");
      },
      async commit() {},
      abort() {},
    };
  }
  const file = new AtomicFile(path);
  let position = 0;
  return {
    tempPath: file.tempPath,
    async write(chunk) {
      file.writeAt(chunk, position);
      position += chunk.length;
    },
    async commit() {
      file.commit();
    },
    abort() {
      file.abort();
    },
  };
}

/** Prints a report: JSON on stdout with --json (or stderr when stdout carries data). */
export function report(value: unknown, text: string, options: { json?: boolean; quiet?: boolean; dataOnStdout?: boolean }): void {
  const sink = options.dataOnStdout ? process.stderr : process.stdout;
  if (options.json) sink.write(`${JSON.stringify(value, jsonReplacer, 2)}\n`);
  else if (!options.quiet) process.stderr.write(text.endsWith("\n") ? text : `${text}\n`);
}

function jsonReplacer(_key: string, value: unknown): unknown {
  if (typeof value === "bigint") return `0x${value.toString(16).padStart(16, "0")}`;
  return value;
}

/** A one-line progress display on stderr, only when stderr is a terminal. */
export class Progress {
  readonly #enabled: boolean;
  readonly #label: string;
  readonly #started = performance.now();
  #last = 0;

  constructor(label: string, options: { json?: boolean; quiet?: boolean }) {
    this.#enabled = process.stderr.isTTY === true && !options.json && !options.quiet && !process.env["NO_PROGRESS"];
    this.#label = label;
  }

  update(done: number, total?: number): void {
    if (!this.#enabled) return;
    const now = performance.now();
    if (now - this.#last < 100 && (total === undefined || done < total)) return;
    this.#last = now;
    const rate = done / Math.max((now - this.#started) / 1000, 1e-3);
    const percent = total ? ` ${((done / total) * 100).toFixed(0).padStart(3)}%` : "";
    process.stderr.write(`\r${this.#label}: ${formatBytes(done)}${total ? ` / ${formatBytes(total)}` : ""}${percent}  ${formatBytes(rate)}/s   `);
  }

  done(): void {
    if (this.#enabled) process.stderr.write("\r\x1b[K");
  }
}

export function formatBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

/** Parses a size like 4096, 4k, 64KiB, 1M, 256MiB, 1g. */
export function parseSize(text: string): number {
  const match = /^(\d+)\s*([kmgt]?)(i?b)?$/i.exec(text.trim());
  if (!match) throw new MigrationError("EINVAL", `invalid size ${JSON.stringify(text)}`);
  const scale = { "": 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 }[match[2]!.toLowerCase()] ?? 1;
  return Number(match[1]) * scale;
}

/** The flags readerLimitOptions / readerOptions add. */
export interface ReaderFlags {
  deviceId?: string;
  maxState: string;
  maxRecord: string;
}

/** Decoder limits from the reader flags. */
export function readerLimits(flags: Pick<ReaderFlags, "maxState" | "maxRecord">): { maxStateSize: number; maxRecordPayload: number } {
  return { maxStateSize: parseSize(flags.maxState), maxRecordPayload: parseSize(flags.maxRecord) };
}

/** The options of every command that reads a stream: its limits, checked before allocation. */
export function readerLimitOptions(command: Command): Command {
  return command
    .option("--max-state <bytes>", "largest state accepted (checked before anything is allocated)", "1G")
    .option("--max-record <bytes>", "largest record payload accepted", "16M");
}

/** readerLimitOptions, plus the device compatibility id a stream must carry. */
export function readerOptions(command: Command, deviceIdHelp = "refuse streams for another device compatibility id"): Command {
  return readerLimitOptions(command.option("--device-id <id>", deviceIdHelp));
}
