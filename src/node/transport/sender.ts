// The sending end: dial, stream, half-close, then wait for the receiver's verdict.
//
// Success is only ever an "OK" that arrives after the whole stream went out and the sender
// half-closed: before that, no honest receiver can have validated and stored the state, so an
// early "OK" is a protocol error. Every wait has a deadline: no progress (PROGRESS_BYTES moving)
// for `timeoutMs` gives up, and so does a verdict that takes longer than that after the end.
import type { Socket } from "node:net";
import { MigrationError } from "../../core/errors.js";
import type { EncoderSummary } from "../../codec/encoder.js";
import { createXxh3 } from "../../core/xxh3.js";
import { type MigrationReport, migrateOut, type PrecopyOptions } from "../../migration/precopy.js";
import type { MigrationDevice } from "../../migration/v2/migration-device.js";
import { encodeFile, type EncodeFileOptions } from "../files.js";
import { DEFAULT_LIMITS, HEADER_PREFIX } from "../../format/constants.js";
import { parseHeaderPrefix } from "../../format/header.js";
import { checkChannels, encodePreamble, frameHeader, LastBytes, newMigrationId } from "./channels.js";
import { dial, SocketWriter } from "./connection.js";
import { checkTimeout, ProgressDeadline } from "./deadline.js";
import type { TransportSecurity } from "./tls.js";
import { END_RECORD_BYTES, ioError, MAX_VERDICT, makeTrailer, NONCE_BYTES, StreamTail, TRAILER_BYTES, verdictError, verdictProof } from "./verdict.js";

export interface DialTarget {
  host?: string;
  port: number;
  signal?: AbortSignal;
  /** TLS with certificates or pre-shared keys; plain TCP when absent. */
  tls?: TransportSecurity;
  /**
   * The longest the transfer may go without progress (ms): connecting, each stretch of the
   * stream (at least 64 KiB must be taken by the receiver within it), and the verdict after
   * the end. Default 60 s.
   */
  timeoutMs?: number;
  /**
   * Connections the migration uses, 1 to 16 (default 1). With more, the stream after its header
   * is striped across them in frames (./channels.ts); one connection is today's wire, byte for byte.
   */
  channels?: number;
}

export interface SendOptions extends DialTarget, Pick<PrecopyOptions, "thresholdBytes" | "maxRounds" | "bandwidth" | "minProgress" | "onRound" | "chunkSize"> {}

export interface SendResult extends MigrationReport {
  /** The device's state digest when it stopped: what the receiver now holds. */
  digest: bigint;
}

/**
 * Streams what `produce` writes to a receiver (a chunk must stay unchanged until its `release`
 * runs, or for good when none is given), half-closes, and resolves with `produce`'s result
 * once the receiver answered OK. Rejects with the receiver's error code, ETIMEDOUT when the
 * transfer stalled, EIO for connection and protocol problems, ECANCELED when aborted.
 */
export async function sendStream<T>(
  target: DialTarget,
  produce: (write: (chunk: Uint8Array, release?: () => void) => Promise<void>, signal: AbortSignal) => Promise<T>,
): Promise<T> {
  const { host = "127.0.0.1", port, signal } = target;
  const timeoutMs = checkTimeout(target.timeoutMs);
  const channels = checkChannels(target.channels);
  const where = `${host}:${port}`;
  if (signal?.aborted) throw new MigrationError("ECANCELED", "migration aborted before it started");
  if (channels > 1) return sendChannels(target, produce, channels, timeoutMs);
  const socket = await dial({ host, port, tls: target.tls, timeoutMs, signal });

  // Stops the producer when the connection ends, the receiver answers early, or time is up.
  const stop = new AbortController();
  let timedOut = false;
  const deadline = new ProgressDeadline(timeoutMs, () => {
    timedOut = true;
    stop.abort();
    socket.destroy();
  });
  const verdict = watchVerdict(socket, () => stop.abort());
  const onAbort = (): void => {
    stop.abort();
    socket.destroy();
  };
  signal?.addEventListener("abort", onAbort, { once: true });
  const writer = new SocketWriter(socket, deadline, stop.signal);
  let sent = 0;
  // The stream's last bytes (its END record), for the proof the verdict must carry.
  const tail = new StreamTail();
  const trailer = makeTrailer();
  let proof = "";

  try {
    let result: T;
    try {
      result = await produce((chunk, release) => {
        if (stop.signal.aborted) throw new MigrationError("ECANCELED", "connection ended");
        sent += chunk.length;
        tail.push(chunk);
        return writer.write(chunk, release);
      }, stop.signal);
      // The nonce goes after every stream byte: only a receiver that read them all learns it.
      tail.push(new Uint8Array(TRAILER_BYTES));
      proof = verdictProof(sent, tail.streamEnd, trailer.subarray(TRAILER_BYTES - NONCE_BYTES));
      await writer.write(trailer);
    } catch (error) {
      throw explain(error);
    }
    // Half-close: the stream is complete; the receiver now validates, stores, and answers. The
    // end of the stream counts as progress: the verdict then has the whole timeout.
    socket.end(() => deadline.restart());
    await verdict.settled;
    const problem = explain(undefined);
    if (problem) throw problem;
    return result;
  } finally {
    deadline.stop();
    signal?.removeEventListener("abort", onAbort);
    socket.destroy();
  }

  function explain(error: unknown): MigrationError | undefined {
    return explainEnd({ signal, verdict, where, sent, proof, timedOut, timeoutMs, finished: socket.writableFinished }, error);
  }
}

/** Frames are cut at most this long (the length field is 32-bit; smaller keeps channels alternating). */
const MAX_FRAME = 1 << 30;

/**
 * sendStream over `count` connections (./channels.ts): channel 0 opens with its preamble and the
 * stream header, the other channels are dialled meanwhile, then the rest of the
 * stream goes out in frames, frame k on channel k mod count, each channel with its own writer
 * (its own in-flight bound and, with TLS, its own encryption). Any channel failing stops the
 * producer and fails the whole migration; the one verdict comes on channel 0.
 */
async function sendChannels<T>(
  target: DialTarget,
  produce: (write: (chunk: Uint8Array, release?: () => void) => Promise<void>, signal: AbortSignal) => Promise<T>,
  count: number,
  timeoutMs: number,
): Promise<T> {
  const { host = "127.0.0.1", port, signal } = target;
  const where = `${host}:${port}`;
  const dialOne = (): Promise<Socket> => dial({ host, port, tls: target.tls, timeoutMs, signal });
  const id = newMigrationId();
  const first = await dialOne();
  const sockets: Socket[] = [first];
  const stop = new AbortController();
  let timedOut = false;
  let ended = false;
  const deadline = new ProgressDeadline(timeoutMs, () => {
    timedOut = true;
    stop.abort();
    for (const s of sockets) s.destroy();
  });
  const verdict = watchVerdict(first, () => stop.abort());
  const onAbort = (): void => {
    stop.abort();
    for (const s of sockets) s.destroy();
  };
  signal?.addEventListener("abort", onAbort, { once: true });
  const writers = [new SocketWriter(first, deadline, stop.signal, count)];
  let sent = 0;
  const last = new LastBytes(END_RECORD_BYTES);
  const trailer = makeTrailer();
  let proof = "";
  // The header goes on channel 0 as is: its first HEADER_PREFIX bytes tell its whole size.
  const prefix = new Uint8Array(HEADER_PREFIX);
  let headerSize = HEADER_PREFIX;
  let headerSent = 0;
  let seq = 0;

  const openExtras = async (): Promise<void> => {
    const extras = await Promise.all(
      Array.from({ length: count - 1 }, async (_, i) => {
        const socket = await dialOne().catch((error: unknown) => {
          throw ioError(`cannot open channel ${i + 1} to ${where}`, error);
        });
        // The migration may have failed while this one was connecting: nothing else would close it.
        if (ended) socket.destroy();
        sockets.push(socket);
        // A channel that ends before the migration did fails it at once, whoever is writing.
        socket.on("error", () => stop.abort());
        socket.on("close", () => {
          if (!ended) stop.abort();
        });
        return socket;
      }),
    );
    if (stop.signal.aborted) throw new MigrationError("ECANCELED", "connection ended");
    extras.forEach((socket, i) => {
      const writer = new SocketWriter(socket, deadline, stop.signal, count);
      writers.push(writer);
      void writer.write(encodePreamble({ id, index: i + 1, count })).catch(() => undefined);
    });
  };
  const frame = async (part: Uint8Array, release?: () => void): Promise<void> => {
    const writer = writers[seq % count]!;
    await writer.write(frameHeader(part.length, seq));
    seq++;
    await writer.write(part, release);
  };
  const write = async (chunk: Uint8Array, release?: () => void): Promise<void> => {
    if (stop.signal.aborted) throw new MigrationError("ECANCELED", "connection ended");
    if (chunk.length === 0) {
      release?.();
      return;
    }
    sent += chunk.length;
    last.push(chunk);
    let at = 0;
    while (headerSent < headerSize && at < chunk.length) {
      const n = Math.min(headerSize - headerSent, chunk.length - at);
      if (headerSent < HEADER_PREFIX) prefix.set(chunk.subarray(at, at + Math.min(n, HEADER_PREFIX - headerSent)), headerSent);
      headerSent += n;
      at += n;
      if (headerSent === HEADER_PREFIX && headerSize === HEADER_PREFIX) headerSize = parseHeaderPrefix(prefix, DEFAULT_LIMITS.maxHeaderSize);
    }
    // The chunk may leave in several writes: `release` runs once the last of them is sent.
    const parts = Math.ceil((chunk.length - at) / MAX_FRAME) + (at > 0 ? 1 : 0);
    let pending = parts;
    const done = release ? () => --pending === 0 && release() : undefined;
    if (at > 0) await writers[0]!.write(chunk.subarray(0, at), done);
    if (at === chunk.length) return;
    await extrasOpen;
    for (let from = at; from < chunk.length; from += MAX_FRAME) await frame(chunk.subarray(from, Math.min(chunk.length, from + MAX_FRAME)), done);
  };

  // The other channels are dialled while channel 0 sends its header (the receiver holds them
  // until that header made channel 0 the owner): their handshakes overlap the first encoding.
  const extrasOpen = openExtras();
  extrasOpen.catch(() => undefined);
  try {
    let result: T;
    try {
      await writers[0]!.write(encodePreamble({ id, index: 0, count }));
      result = await produce(write, stop.signal);
      await extrasOpen;
      // The end frame on every channel, then the trailer on channel 0, after every stream byte.
      for (const writer of writers) await writer.write(frameHeader(0, seq));
      proof = verdictProof(sent, last.bytes, trailer.subarray(TRAILER_BYTES - NONCE_BYTES));
      await writers[0]!.write(trailer);
    } catch (error) {
      throw explain(error);
    }
    ended = true;
    for (const socket of sockets.slice(1)) socket.end();
    first.end(() => deadline.restart());
    await verdict.settled;
    const problem = explain(undefined);
    if (problem) throw problem;
    return result;
  } finally {
    ended = true;
    deadline.stop();
    signal?.removeEventListener("abort", onAbort);
    for (const s of sockets) s.destroy();
  }

  function explain(error: unknown): MigrationError | undefined {
    const problem = explainEnd({ signal, verdict, where, sent, proof, timedOut, timeoutMs, finished: first.writableFinished }, error);
    // A receiver older than channels reads the preamble as a stream with a bad magic.
    if (problem?.code === "EBADMSG" && /bad magic/.test(problem.message)) {
      return new MigrationError(
        "EPROTONOSUPPORT",
        `the receiver at ${where} does not take several channels (a migstream older than --channels): upgrade it, or send with one channel (it said: ${problem.message})`,
      );
    }
    return problem;
  }
}

interface EndContext {
  signal: AbortSignal | undefined;
  verdict: VerdictWatch;
  where: string;
  sent: number;
  proof: string;
  timedOut: boolean;
  timeoutMs: number;
  /** This end finished sending (and half-closed). */
  finished: boolean;
}

/** The best explanation of why the transfer ended without an OK (undefined: it got one). */
function explainEnd(context: EndContext, error: unknown): MigrationError | undefined {
  const { signal, verdict, where, sent, proof, timedOut, timeoutMs } = context;
  if (signal?.aborted) return new MigrationError("ECANCELED", "migration aborted");
  // What the receiver said, if anything, explains the failure better than our side of it.
  if (verdict.line !== undefined) {
    if (verdict.early && verdict.line.startsWith("OK")) {
      return ioError(`protocol error: the receiver at ${where} answered OK before the stream was complete`);
    }
    const refused = verdictError(verdict.line, sent, proof);
    if (refused) return refused;
    if (verdict.early) return ioError(`protocol error: the receiver at ${where} answered OK before the stream was complete`);
    return error === undefined ? undefined : ioError(`the migration failed after the receiver at ${where} accepted it`, error);
  }
  if (timedOut) {
    return new MigrationError(
      "ETIMEDOUT",
      context.finished
        ? `no verdict from the receiver at ${where} within ${timeoutMs} ms of the end of the stream`
        : `no progress sending to ${where} for ${timeoutMs} ms (the receiver stopped reading)`,
    );
  }
  if (error === undefined || verdict.closed || verdict.failure || (error instanceof MigrationError && error.code === "ECANCELED")) {
    const what = error === undefined ? `receiver at ${where} closed the connection without a verdict` : `connection to ${where} lost during the migration`;
    return ioError(what, verdict.failure);
  }
  return error instanceof MigrationError ? error : ioError(`migration to ${where} failed`, error);
}

interface VerdictWatch {
  settled: Promise<void>;
  line: string | undefined;
  /** The line came before this end finished sending and half-closed. */
  early: boolean;
  closed: boolean;
  failure: Error | undefined;
}

/** Collects the receiver's one line; `onEnd` runs when it arrives or the connection ends. */
function watchVerdict(socket: Socket, onEnd: () => void): VerdictWatch {
  let reply = "";
  const watch: VerdictWatch = { settled: Promise.resolve(), line: undefined, early: false, closed: false, failure: undefined };
  watch.settled = new Promise<void>((resolve) => {
    socket.on("data", (data: Buffer) => {
      if (watch.line !== undefined) return;
      reply += data.toString("latin1");
      const newline = reply.indexOf("\n");
      if (newline < 0 && reply.length <= MAX_VERDICT) return;
      watch.line = Buffer.from(newline >= 0 ? reply.slice(0, newline) : reply.slice(0, 200), "latin1").toString("utf8");
      watch.early = !socket.writableFinished;
      onEnd();
      resolve();
    });
    socket.on("error", (error) => {
      watch.failure ??= error;
      onEnd();
      resolve();
    });
    socket.on("close", () => {
      watch.closed = true;
      onEnd();
      resolve();
    });
  });
  return watch;
}

/**
 * Migrates `device` (running) to a receiver: pre-copy rounds while its workload keeps running,
 * stop-copy, then waits for the receiver's verdict. Resolves with the migration report once
 * the receiver stored the state; rejects with the receiver's error code (a corrupt or
 * incompatible stream, or its own failure to store it), ETIMEDOUT when the transfer stalled,
 * EIO for connection problems, ECANCELED when aborted. On failure the device is RUNNING again.
 */
export async function sendDevice(device: MigrationDevice, options: SendOptions): Promise<SendResult> {
  const { host, port, signal, tls, timeoutMs, channels, ...precopy } = options;
  let digest = 0n;
  const report = await sendStream(
    {
      ...(host !== undefined ? { host } : {}),
      port,
      ...(signal ? { signal } : {}),
      ...(tls ? { tls } : {}),
      ...(timeoutMs !== undefined ? { timeoutMs } : {}),
      ...(channels !== undefined ? { channels } : {}),
    },
    async (write, stop) => {
      const result = await migrateOut(device, { ...precopy, signal: stop, send: write });
      digest = device.model.digest();
      return result;
    },
  ).catch(async (error: unknown) => {
    // The stream may have ended and the verdict failed: the device stopped for nothing. It
    // carries on, as after any failed migration (the target holds nothing).
    if (device.state === "STOP") await device.setState("RUNNING").catch(() => device.reset());
    throw error;
  });
  return { ...report, digest };
}

export interface SendFileOptions
  extends DialTarget,
    Pick<EncodeFileOptions, "pageSize" | "deviceId" | "checksum" | "maxRecordPayload" | "compress" | "jobs" | "pool" | "onnote"> {
  /** Called after each window of the file was encoded, with bytes done and the file's size. */
  onprogress?: (done: number, total: number) => void;
}

export interface SendFileResult {
  summary: EncoderSummary;
  /** XXH3-64 of the file's content: what the receiver now holds. */
  digest: bigint;
  durationMs: number;
}

/**
 * Sends a snapshot file as one full stream, encoded window by window with positional reads
 * (a snapshot does not change, so one pass suffices and no device is built). Connects first:
 * with nobody listening it fails before reading the file.
 */
export async function sendFile(path: string, options: SendFileOptions): Promise<SendFileResult> {
  const { host, port, signal, tls, timeoutMs, channels, onprogress, ...encoder } = options;
  const started = performance.now();
  const target: DialTarget = {
    port,
    ...(host !== undefined ? { host } : {}),
    ...(signal ? { signal } : {}),
    ...(tls ? { tls } : {}),
    ...(timeoutMs !== undefined ? { timeoutMs } : {}),
    ...(channels !== undefined ? { channels } : {}),
  };
  let digest = 0n;
  const summary = await sendStream(target, async (write, stop) => {
    const hasher = createXxh3();
    try {
      const result = await encodeFile(path, write, {
        ...encoder,
        signal: stop,
        onwindow: (view) => hasher.update(view),
        ...(onprogress ? { onprogress } : {}),
      });
      digest = hasher.digest();
      return result;
    } finally {
      hasher.free();
    }
  });
  return { summary, digest, durationMs: performance.now() - started };
}
