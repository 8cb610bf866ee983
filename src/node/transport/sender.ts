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
import { dial, SocketWriter } from "./connection.js";
import { checkTimeout, ProgressDeadline } from "./deadline.js";
import type { TransportSecurity } from "./tls.js";
import { ioError, MAX_VERDICT, makeTrailer, NONCE_BYTES, StreamTail, TRAILER_BYTES, verdictError, verdictProof } from "./verdict.js";

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
  const where = `${host}:${port}`;
  if (signal?.aborted) throw new MigrationError("ECANCELED", "migration aborted before it started");
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

  /** The best explanation of why the transfer ended without an OK (undefined: it got one). */
  function explain(error: unknown): MigrationError | undefined {
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
        socket.writableFinished
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
  const { host, port, signal, tls, timeoutMs, ...precopy } = options;
  let digest = 0n;
  const report = await sendStream(
    {
      ...(host !== undefined ? { host } : {}),
      port,
      ...(signal ? { signal } : {}),
      ...(tls ? { tls } : {}),
      ...(timeoutMs !== undefined ? { timeoutMs } : {}),
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

export interface SendFileOptions extends DialTarget, Pick<EncodeFileOptions, "pageSize" | "deviceId" | "checksum" | "maxRecordPayload" | "compress"> {
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
  const { host, port, signal, tls, timeoutMs, onprogress, ...encoder } = options;
  const started = performance.now();
  const target: DialTarget = {
    port,
    ...(host !== undefined ? { host } : {}),
    ...(signal ? { signal } : {}),
    ...(tls ? { tls } : {}),
    ...(timeoutMs !== undefined ? { timeoutMs } : {}),
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
