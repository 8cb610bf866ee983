// QEMU migration streams as files: the VM description read from the end of a seekable file (so
// device sections are walked as they arrive, nothing buffered), RAM decoded into a file with
// positional I/O (at most RESIDENT bytes of it in memory), streams written from RAM files, and
// the conversions to and from migstream's format.
import { closeSync, fstatSync, ftruncateSync, openSync, readSync } from "node:fs";
import type { DecoderSummary, StreamDecoder } from "../codec/decoder.js";
import { type EncoderSummary, StreamEncoder } from "../codec/encoder.js";
import { MigrationError } from "../core/errors.js";
import { isPackedDeviceState, packDeviceState, unpackDeviceState } from "../qemu/container.js";
import type { RamBlock, RamMode } from "../qemu/ram-kernel.js";
import { type QemuDeviceState, type QemuReaderOptions, QemuStreamReader, type QemuStreamSummary } from "../qemu/reader.js";
import { findDescription } from "../qemu/vmdesc.js";
import { type QemuWriterSummary, QemuStreamWriter } from "../qemu/writer.js";
import { AtomicFile, ioError } from "./atomic-file.js";
import { createFileDecoder } from "./files.js";

/** RAM image bytes kept in memory while decoding to a file; the rest is on disk. */
const RESIDENT = 64 << 20;
const WINDOW = 4 << 20;
const DESCRIPTION_LIMIT = 16 << 20;

type Source = AsyncIterable<Uint8Array> | Iterable<Uint8Array>;

export interface QemuFileOptions extends Omit<QemuReaderOptions, "ram" | "description"> {
  onprogress?: (bytes: number) => void;
}

/**
 * The VM description at the end of a regular file (undefined for anything else, or when the file
 * does not end with one): with it, a reader walks device sections as they arrive.
 */
export function readQemuDescription(path: string, limit = DESCRIPTION_LIMIT): Uint8Array | undefined {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch {
    return undefined;
  }
  try {
    const stats = fstatSync(fd);
    if (!stats.isFile()) return undefined;
    const size = Math.min(stats.size, limit + 6);
    const tail = new Uint8Array(size);
    let done = 0;
    while (done < size) {
      const n = readSync(fd, tail, done, size - done, stats.size - size + done);
      if (n === 0) return undefined;
      done += n;
    }
    const eof = findDescription(tail);
    return eof < 0 ? undefined : tail.slice(eof + 6);
  } finally {
    closeSync(fd);
  }
}

/** Is the file (not stdin) a QEMU migration stream? It starts with "QEVM". */
export function isQemuFile(path: string): boolean {
  if (path === "-") return false;
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch {
    return false;
  }
  try {
    const magic = new Uint8Array(4);
    return readSync(fd, magic, 0, 4, 0) === 4 && magic[0] === 0x51 && magic[1] === 0x45 && magic[2] === 0x56 && magic[3] === 0x4d;
  } finally {
    closeSync(fd);
  }
}

async function pump(reader: QemuStreamReader, source: Source, onprogress?: (bytes: number) => void): Promise<QemuStreamSummary> {
  let bytes = 0;
  for await (const chunk of source) {
    reader.push(chunk);
    onprogress?.((bytes += chunk.length));
  }
  return reader.end();
}

function readerFor(path: string | undefined, ram: RamMode, options: QemuFileOptions & Pick<QemuReaderOptions, "onblocks">): QemuStreamReader {
  const { onprogress: _progress, ...limits } = options;
  const description = path === undefined ? undefined : readQemuDescription(path, limits.maxDescriptionBytes);
  if (description) {
    try {
      return new QemuStreamReader({ ...limits, ram, description });
    } catch (error) {
      if (!(error instanceof MigrationError)) throw error;
      // A description the reader refuses: read the stream in one pass instead, which meets the
      // same problem where it is in the stream (and says so with its byte offset).
    }
  }
  return new QemuStreamReader({ ...limits, ram });
}

export interface QemuInspectReport {
  summary: QemuStreamSummary;
  /** The first problem found; the stream is valid when this is undefined. */
  problem: MigrationError | undefined;
}

/**
 * Reads a whole QEMU stream, keeping nothing, and reports it with the first problem found. With
 * `path` (a regular file) the description is read from its end first.
 */
export async function inspectQemuStream(source: Source, path?: string, options: QemuFileOptions = {}): Promise<QemuInspectReport> {
  const reader = readerFor(path, { kind: "check" }, { ...options, keepDeviceState: false });
  try {
    await pump(reader, source, options.onprogress);
    return { summary: reader.summary(), problem: undefined };
  } catch (error) {
    if (!(error instanceof MigrationError)) throw error;
    return { summary: reader.summary(), problem: error };
  } finally {
    reader.release();
  }
}

export interface QemuDecodeOptions extends QemuFileOptions {
  /** Only this RAM block; otherwise all of them, concatenated in stream order. */
  region?: string;
}

export interface QemuDecodeResult {
  summary: QemuStreamSummary;
  /** The device state, for a writer (convert, apply). */
  state: QemuDeviceState;
  /** Bytes written to the output. */
  size: number;
}

/**
 * Decodes a QEMU stream's RAM into `output` (written atomically: a temporary name, renamed only
 * once the whole stream verified): the blocks concatenated in stream order, or the one named.
 */
export async function decodeQemuToFile(source: Source, output: string, path?: string, options: QemuDecodeOptions = {}): Promise<QemuDecodeResult> {
  const file = new AtomicFile(output);
  let bases: number[] = [];
  let wanted = -1;
  const spill = {
    write: (block: number, offset: number, bytes: Uint8Array) => {
      if (wanted < 0 || block === wanted) file.writeAt(bytes, bases[block]! + offset);
    },
    read: (block: number, offset: number, into: Uint8Array) => {
      // Blocks other than the one asked for are never written out: they read back as zeros.
      if (wanted >= 0 && block !== wanted) {
        into.fill(0);
        return;
      }
      let done = 0;
      while (done < into.length) {
        const n = readSync(file.fd, into, done, into.length - done, bases[block]! + offset + done);
        if (n === 0) break;
        done += n;
      }
      into.fill(0, done);
    },
  };
  // The block list comes first in the stream: the layout is known before any page is spilled.
  const layout = (blocks: readonly RamBlock[]): void => {
    let at = 0;
    bases = blocks.map((b) => {
      const base = at;
      at += b.size;
      return base;
    });
    if (options.region !== undefined) {
      wanted = blocks.findIndex((b) => b.name === options.region);
      if (wanted < 0)
        throw new MigrationError("EINVAL", `no RAM block ${JSON.stringify(options.region)} in this stream (blocks: ${blocks.map((b) => b.name).join(", ")})`);
      bases = blocks.map(() => 0);
    }
  };
  const reader = readerFor(path, { kind: "spill", spill, residentBytes: RESIDENT }, { ...options, keepDeviceState: true, onblocks: layout });
  try {
    const summary = await pump(reader, source, options.onprogress);
    const size = wanted >= 0 ? summary.ramBlocks[wanted]!.size : summary.ramBlocks.reduce((n, b) => n + b.size, 0);
    try {
      ftruncateSync(file.fd, size);
    } catch (cause) {
      throw ioError(`cannot write ${output}`, cause);
    }
    const state = reader.deviceState();
    file.commit();
    return { summary, state, size };
  } catch (error) {
    file.abort();
    throw error;
  } finally {
    reader.release();
  }
}

/** Where each block's bytes are read from: a file and the offset of the block in it. */
export interface BlockSource {
  path: string;
  offset: number;
}

/**
 * Writes a QEMU stream for `state` with each block's RAM read from its source, handing the
 * stream to `write` chunk by chunk (each awaited).
 */
export async function writeQemuStream(
  state: QemuDeviceState,
  sources: readonly BlockSource[],
  write: (chunk: Uint8Array) => Promise<void> | void,
): Promise<QemuWriterSummary> {
  let pending: Uint8Array[] = [];
  const writer = new QemuStreamWriter(state, (view) => pending.push(view.slice()));
  const flush = async (): Promise<void> => {
    const out = pending;
    pending = [];
    for (const chunk of out) await write(chunk);
  };
  const window = new Uint8Array(WINDOW);
  const fds = new Map<string, number>();
  try {
    for (const [i, block] of state.blocks.entries()) {
      const source = sources[i]!;
      let fd = fds.get(source.path);
      if (fd === undefined) {
        try {
          fd = openSync(source.path, "r");
        } catch (cause) {
          throw ioError(`cannot open ${source.path}`, cause);
        }
        fds.set(source.path, fd);
      }
      for (let at = 0; at < block.size; at += WINDOW) {
        const view = window.subarray(0, Math.min(WINDOW, block.size - at));
        let done = 0;
        while (done < view.length) {
          const n = readSync(fd, view, done, view.length - done, source.offset + at + done);
          if (n === 0) throw new MigrationError("EIO", `${source.path} ended at byte ${source.offset + at + done}, inside block ${JSON.stringify(block.name)}`);
          done += n;
        }
        writer.write(view);
        await flush();
      }
    }
    const summary = writer.end();
    await flush();
    return summary;
  } finally {
    for (const fd of fds.values()) closeSync(fd);
  }
}

/** Sources for blocks concatenated in one file, in order. */
export function concatenatedSources(path: string, blocks: readonly RamBlock[]): BlockSource[] {
  let at = 0;
  return blocks.map((b) => {
    const source = { path, offset: at };
    at += b.size;
    return source;
  });
}

/**
 * A migstream stream from a QEMU RAM file (the blocks concatenated, from decodeQemuToFile):
 * one region per block, named like it, and the device state in the config blob.
 */
export async function encodeQemuAsMigstream(
  ramFile: string,
  state: QemuDeviceState,
  write: (chunk: Uint8Array) => Promise<void> | void,
): Promise<EncoderSummary> {
  const blob = packDeviceState(state);
  let pending: Uint8Array[] = [];
  const encoder = new StreamEncoder(
    { regions: state.blocks.map((b) => ({ name: b.name, size: b.size })), maxRecordPayload: Math.max(1 << 20, blob.length) },
    (view) => pending.push(view.slice()),
  );
  const flush = async (): Promise<void> => {
    const out = pending;
    pending = [];
    for (const chunk of out) await write(chunk);
  };
  const fd = openSync(ramFile, "r");
  try {
    encoder.writeConfig(blob);
    const total = state.blocks.reduce((n, b) => n + b.size, 0);
    const window = new Uint8Array(WINDOW);
    for (let at = 0; at < total; at += WINDOW) {
      const view = window.subarray(0, Math.min(WINDOW, total - at));
      let done = 0;
      while (done < view.length) {
        const n = readSync(fd, view, done, view.length - done, at + done);
        if (n === 0) throw new MigrationError("EIO", `${ramFile} ended early at byte ${at + done}`);
        done += n;
      }
      encoder.push(view);
      await flush();
    }
    encoder.end();
    await flush();
    return encoder.summary();
  } catch (error) {
    encoder.abort();
    throw error;
  } finally {
    closeSync(fd);
  }
}

/**
 * Decodes a migstream stream that `migstream convert` made from a QEMU stream into `ramFile`
 * (its regions concatenated) and returns the QEMU device state its config blob carries.
 */
export async function decodeMigstreamOfQemu(source: Source, ramFile: string): Promise<{ state: QemuDeviceState; summary: DecoderSummary }> {
  const decoder: StreamDecoder = createFileDecoder(ramFile, { maxStateSize: 64 * 2 ** 30 });
  try {
    for await (const chunk of source) decoder.push(chunk);
    decoder.end();
  } catch (error) {
    decoder.abort();
    throw error;
  }
  const header = decoder.header!;
  if (!isPackedDeviceState(decoder.config)) {
    throw new MigrationError("ENODEV", "this migstream stream carries no QEMU device state (it was not converted from a QEMU stream)");
  }
  return { state: unpackDeviceState(decoder.config!, header.regions), summary: decoder.summary() };
}
