// Live migration over TCP, with the v2 state machine on both ends.
//
// Protocol (one connection, one migration):
//   sender -> receiver   the migstream stream (header, pre-copy rounds, stop-copy, end record),
//                        then a half-close (FIN): "that is all of it"
//   receiver -> sender   one verdict line once RESUMING was left: "OK\n", or
//                        "ERR <code> <message>\n" (code: a MigrationErrorCode), then close
//
// The half-close matters: the receiver cannot tell a finished stream from a dropped one by the
// connection alone (both end in FIN), so it always leaves RESUMING and lets validation decide;
// a cut stream lacks its end record and fails as incomplete (ENODATA). The verdict line is what
// lets the sender's exit code say whether the target accepted the state, not only whether the
// bytes left.
import { createServer, connect, type AddressInfo, type Server, type Socket } from "node:net";
import { MigrationError, type MigrationErrorCode } from "../core/errors.js";
import { DEFAULT_LIMITS, HEADER_PREFIX } from "../format/constants.js";
import { parseHeader, parseHeaderPrefix, type StreamHeader } from "../format/header.js";
import { type MigrationReport, migrateOut, type PrecopyOptions } from "../migration/precopy.js";
import type { ResumingSession } from "../migration/resuming-session.js";
import type { DirtyTracking } from "../device/device-model.js";
import { MigrationDevice } from "../migration/v2/migration-device.js";

const CODES: ReadonlySet<string> = new Set<MigrationErrorCode>([
  "EINVAL",
  "EBADMSG",
  "ENODATA",
  "EPROTONOSUPPORT",
  "ENODEV",
  "ESTALE",
  "E2BIG",
  "ENOMSG",
  "ETIMEDOUT",
  "EBUSY",
  "EIO",
  "ENOMEM",
  "EFAULT",
  "ECANCELED",
]);

/** A verdict line longer than this is not a verdict: the peer is not a migstream receiver. */
const MAX_VERDICT = 4096;

export interface SendOptions extends Pick<PrecopyOptions, "thresholdBytes" | "maxRounds" | "bandwidth" | "minProgress" | "onRound" | "chunkSize"> {
  host?: string;
  port: number;
  signal?: AbortSignal;
  /** Give up connecting after this long (ms). Default 10 s. */
  connectTimeoutMs?: number;
  /** Give up waiting for the receiver's verdict after the stream was sent (ms). Default 60 s. */
  verdictTimeoutMs?: number;
}

export interface SendResult extends MigrationReport {
  /** The device's state digest when it stopped: what the receiver now holds. */
  digest: bigint;
}

function ioError(message: string, cause?: unknown): MigrationError {
  const detail = cause instanceof Error ? `: ${cause.message}` : "";
  return new MigrationError("EIO", `${message}${detail}`, cause === undefined ? {} : { cause });
}

/** Resolves once the socket can take more, rejects if it fails or closes first. */
function drained(socket: Socket): Promise<void> {
  return new Promise((resolve, reject) => {
    const cleanup = (): void => {
      socket.off("drain", onDrain);
      socket.off("error", onError);
      socket.off("close", onClose);
    };
    const onDrain = (): void => {
      cleanup();
      resolve();
    };
    const onError = (error: Error): void => {
      cleanup();
      reject(error);
    };
    const onClose = (): void => {
      cleanup();
      reject(new Error("connection closed"));
    };
    socket.on("drain", onDrain);
    socket.on("error", onError);
    socket.on("close", onClose);
  });
}

/** Parses "OK" / "ERR <code> <message>" into undefined (accepted) or the receiver's error. */
function verdictError(line: string): MigrationError | undefined {
  if (line === "OK") return undefined;
  const match = /^ERR (\S+) ?(.*)$/.exec(line);
  if (!match) return new MigrationError("EIO", `unexpected reply from the receiver: ${JSON.stringify(line.slice(0, 200))}`);
  const code = CODES.has(match[1]!) ? (match[1] as MigrationErrorCode) : "EIO";
  return new MigrationError(code, `receiver refused the migration: ${match[2] ?? ""}`);
}

/** The one line a receiver sends back; newlines in messages would break the framing. */
function verdictLine(error: MigrationError | undefined): string {
  if (!error) return "OK\n";
  return `ERR ${error.code} ${error.message.replace(/[\r\n]+/g, " ").slice(0, MAX_VERDICT - 64)}\n`;
}

/**
 * Migrates `device` (running) to a receiver at host:port: pre-copy rounds while its workload
 * keeps running, stop-copy, then waits for the receiver's verdict. Resolves with the migration
 * report once the receiver validated the state; rejects with the receiver's error code (a
 * corrupt or incompatible stream), EIO for connection problems, ECANCELED when aborted.
 */
export async function sendDevice(device: MigrationDevice, options: SendOptions): Promise<SendResult> {
  const { host = "127.0.0.1", port, signal, connectTimeoutMs = 10_000, verdictTimeoutMs = 60_000, ...precopy } = options;
  if (signal?.aborted) throw new MigrationError("ECANCELED", "migration aborted before it started");
  const socket = await connectTo(host, port, connectTimeoutMs, signal);

  // The receiver may answer early (it refused the header, say): stop sending then, and report
  // its reason rather than the broken pipe that follows.
  const stop = new AbortController();
  let reply = "";
  let verdict: string | undefined;
  let failure: Error | undefined;
  let closed = false;
  const settled = new Promise<void>((resolve) => {
    socket.on("data", (data: Buffer) => {
      if (verdict !== undefined) return;
      reply += data.toString("utf8");
      const newline = reply.indexOf("\n");
      if (newline >= 0) {
        verdict = reply.slice(0, newline);
        // Before our half-close this can only be a refusal: stop the migration.
        stop.abort();
        resolve();
      } else if (reply.length > MAX_VERDICT) {
        verdict = reply.slice(0, 200);
        stop.abort();
        resolve();
      }
    });
    socket.on("error", (error) => {
      failure ??= error;
      stop.abort();
      resolve();
    });
    socket.on("close", () => {
      closed = true;
      stop.abort();
      resolve();
    });
  });

  const abortSignal = signal ? AbortSignal.any([signal, stop.signal]) : stop.signal;
  let report: MigrationReport;
  try {
    report = await migrateOut(device, {
      ...precopy,
      signal: abortSignal,
      send: async (chunk) => {
        if (stop.signal.aborted) throw new MigrationError("ECANCELED", "connection ended");
        if (!socket.write(chunk)) await drained(socket);
      },
    });
  } catch (error) {
    socket.destroy();
    if (signal?.aborted) throw new MigrationError("ECANCELED", "migration aborted", { state: device.state });
    // What the receiver said, if anything, explains the failure better than our side of it.
    if (verdict !== undefined) throw verdictError(verdict) ?? ioError("receiver accepted an unfinished migration");
    if (failure || closed || (error instanceof MigrationError && error.code === "ECANCELED")) {
      throw ioError(`connection to ${host}:${port} lost during the migration`, failure);
    }
    throw error;
  }
  const digest = device.model.digest();
  // Half-close: the stream is complete; the receiver now validates and answers.
  socket.end();
  const onAbort = (): void => {
    socket.destroy();
  };
  signal?.addEventListener("abort", onAbort, { once: true });
  // Validation on the receiver is quick; a receiver that never answers is broken or gone.
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    socket.destroy();
  }, verdictTimeoutMs);
  try {
    await settled;
  } finally {
    clearTimeout(timer);
    signal?.removeEventListener("abort", onAbort);
    socket.destroy();
  }
  if (signal?.aborted) throw new MigrationError("ECANCELED", "migration aborted while waiting for the receiver's verdict");
  if (verdict === undefined && timedOut) {
    throw new MigrationError("ETIMEDOUT", `no verdict from the receiver at ${host}:${port} within ${verdictTimeoutMs} ms of the end of the stream`);
  }
  if (verdict === undefined) {
    throw ioError(`receiver at ${host}:${port} closed the connection without a verdict`, failure);
  }
  const error = verdictError(verdict);
  if (error) throw error;
  return { ...report, digest };
}

function connectTo(host: string, port: number, timeoutMs: number, signal: AbortSignal | undefined): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host, port, allowHalfOpen: true });
    socket.setNoDelay(true);
    const timer = setTimeout(() => fail(new Error(`timed out after ${timeoutMs} ms`)), timeoutMs);
    const onAbort = (): void => fail(new MigrationError("ECANCELED", "migration aborted while connecting"));
    signal?.addEventListener("abort", onAbort, { once: true });
    function cleanup(): void {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      socket.off("error", fail);
      socket.off("connect", onConnect);
    }
    function fail(error: Error): void {
      cleanup();
      socket.destroy();
      reject(error instanceof MigrationError ? error : ioError(`cannot connect to ${host}:${port}`, error));
    }
    function onConnect(): void {
      cleanup();
      resolve(socket);
    }
    socket.once("error", fail);
    socket.once("connect", onConnect);
  });
}

export interface ReceiveOptions {
  port: number;
  /** Interface to listen on. Default 127.0.0.1: exposing a device's state is a deliberate choice. */
  host?: string;
  /** Compatibility id the stream must carry. Default: accept the stream's own id. */
  deviceId?: string;
  /** Dirty tracking of the receiving device (it may migrate on later). Default "explicit". */
  tracking?: DirtyTracking;
  /** State to enter after RESUMING validated. Default "RUNNING", as a migrated device resumes. */
  final?: "RUNNING" | "STOP";
  /** Largest state a stream may declare (checked before the device is created). Default 1 GiB. */
  maxStateSize?: number;
  /** Largest record payload accepted. Default 16 MiB. */
  maxRecordPayload?: number;
  /** An accepted connection silent for this long fails (ETIMEDOUT). Default 60 s. */
  idleTimeoutMs?: number;
  signal?: AbortSignal;
  /** Called once the server listens, with the bound address (port 0 picks a free port). */
  onListening?: (address: { host: string; port: number }) => void;
  /** Called when the sender connects. */
  onConnection?: (peer: { host: string; port: number }) => void;
  /** Called with stream bytes received so far. */
  onProgress?: (bytes: number, total: number | undefined) => void;
}

export interface ReceiveResult {
  /** The device, resumed with the migrated state (the caller frees it). */
  device: MigrationDevice;
  header: StreamHeader;
  /** Stream bytes received. */
  bytes: number;
  durationMs: number;
  digest: bigint;
}

/**
 * Listens, accepts ONE connection and migrates its stream into a new device laid out as the
 * stream's header says. The device is created only after the header verified (so a sender
 * cannot make us allocate on unverified sizes), enters RESUMING, takes every byte, and leaves
 * RESUMING when the sender half-closes: that validates the stream. The sender gets "OK" or
 * "ERR code message" either way; this resolves with the device or rejects with the error.
 */
export async function receiveDevice(options: ReceiveOptions): Promise<ReceiveResult> {
  const { signal } = options;
  if (signal?.aborted) throw new MigrationError("ECANCELED", "receive aborted before it started");
  const server = createServer({ allowHalfOpen: true, pauseOnConnect: true });
  const socket = await acceptOne(server, options);
  try {
    return await receiveOn(socket, options);
  } finally {
    server.close();
  }
}

function acceptOne(server: Server, options: ReceiveOptions): Promise<Socket> {
  const { signal, host = "127.0.0.1", port } = options;
  return new Promise((resolve, reject) => {
    const onAbort = (): void => {
      server.close();
      reject(new MigrationError("ECANCELED", "receive aborted while waiting for a connection"));
    };
    signal?.addEventListener("abort", onAbort, { once: true });
    server.once("error", (error) => {
      signal?.removeEventListener("abort", onAbort);
      server.close();
      reject(ioError(`cannot listen on ${host}:${port}`, error));
    });
    server.once("connection", (socket) => {
      signal?.removeEventListener("abort", onAbort);
      // One migration per receiver: stop accepting (the socket itself stays open).
      server.close();
      server.on("connection", (extra: Socket) => extra.destroy());
      resolve(socket);
    });
    server.listen({ host, port }, () => {
      const address = server.address() as AddressInfo;
      options.onListening?.({ host: address.address, port: address.port });
    });
  });
}

async function receiveOn(socket: Socket, options: ReceiveOptions): Promise<ReceiveResult> {
  const { signal } = options;
  const started = performance.now();
  options.onConnection?.({ host: socket.remoteAddress ?? "?", port: socket.remotePort ?? 0 });
  socket.setNoDelay(true);
  let device: MigrationDevice | undefined;
  let session: ResumingSession | undefined;
  let header: StreamHeader | undefined;
  let bytes = 0;
  // Header bytes arrive in any segmentation: collect the prefix, then the whole header.
  let headerBytes = new Uint8Array(HEADER_PREFIX);
  let headerHave = 0;
  const limits = {
    maxStateSize: options.maxStateSize ?? DEFAULT_LIMITS.maxStateSize,
    maxRecordPayload: options.maxRecordPayload ?? DEFAULT_LIMITS.maxRecordPayload,
  };

  const openDevice = async (h: StreamHeader): Promise<void> => {
    if (options.deviceId !== undefined && options.deviceId !== h.deviceId) {
      // Refused before allocating a device for a stream it would refuse anyway.
      throw new MigrationError("ENODEV", `stream is for device ${JSON.stringify(h.deviceId)}, expected ${JSON.stringify(options.deviceId)}`, {
        recordIndex: 0,
        byteOffset: 48,
      });
    }
    device = new MigrationDevice({
      regions: h.regions,
      pageSize: h.pageSize,
      deviceId: options.deviceId ?? h.deviceId,
      ...(options.tracking ? { tracking: options.tracking } : {}),
      limits: { ...limits, maxHeaderSize: DEFAULT_LIMITS.maxHeaderSize },
    });
    await device.setState("STOP");
    session = (await device.setState("RESUMING")) as ResumingSession;
    // The resuming session verifies the header again, as part of the stream it validates.
    session.write(headerBytes);
  };

  /** Takes one chunk of the stream. */
  const take = async (chunk: Uint8Array): Promise<void> => {
    bytes += chunk.length;
    let at = 0;
    while (!session && at < chunk.length) {
      const want = headerBytes.length - headerHave;
      const n = Math.min(want, chunk.length - at);
      headerBytes.set(chunk.subarray(at, at + n), headerHave);
      headerHave += n;
      at += n;
      if (headerHave < headerBytes.length) return;
      if (headerBytes.length === HEADER_PREFIX) {
        const full = new Uint8Array(parseHeaderPrefix(headerBytes, DEFAULT_LIMITS.maxHeaderSize));
        full.set(headerBytes);
        headerBytes = full;
      } else {
        header = parseHeader(headerBytes, limits);
        await openDevice(header);
      }
    }
    if (session && at < chunk.length) session.write(at === 0 ? chunk : chunk.subarray(at));
    options.onProgress?.(bytes, undefined);
  };

  let error: MigrationError | undefined;
  let dropped: Error | undefined;
  let ended = false;
  const onAbort = (): void => {
    socket.destroy(new MigrationError("ECANCELED", "receive aborted"));
  };
  signal?.addEventListener("abort", onAbort, { once: true });
  socket.setTimeout(options.idleTimeoutMs ?? 60_000, () => {
    socket.destroy(new MigrationError("ETIMEDOUT", `no data from the sender for ${options.idleTimeoutMs ?? 60_000} ms`));
  });
  try {
    // The async iterator gives backpressure for free: the socket is read no faster than the
    // resuming session takes it. Leaving the loop early (a refused stream) must not destroy
    // the socket: the verdict still has to go out on it.
    const chunks = socket.iterator({ destroyOnReturn: false }) as AsyncIterable<Buffer>;
    for await (const chunk of chunks) await take(chunk);
    ended = true;
  } catch (caught) {
    // Our own errors (a refused stream, abort, idle timeout) are the verdict; a socket error
    // means the connection dropped.
    if (caught instanceof MigrationError) error = caught;
    else dropped = caught as Error;
  }

  try {
    if (!error && !ended) {
      // The connection broke (reset) rather than ending: whatever arrived is incomplete.
      error = new MigrationError("ENODATA", `incomplete stream: connection dropped after ${bytes} bytes (${dropped?.message ?? "closed"})`, {
        byteOffset: bytes,
      });
    }
    if (!error && !session) {
      error = new MigrationError("ENODATA", `incomplete stream: the connection ended inside the header, after ${bytes} bytes`, {
        recordIndex: 0,
        byteOffset: bytes,
      });
    }
    if (device && device.state === "RESUMING") {
      // Leaving RESUMING is the validation point, also after a failure: the device goes to
      // ERROR then and keeps its previous content (here: none).
      try {
        await device.setState(options.final ?? "RUNNING");
      } catch (caught) {
        error ??= caught instanceof MigrationError ? caught : ioError("resume failed", caught);
      }
    }
  } finally {
    signal?.removeEventListener("abort", onAbort);
  }

  await reply(socket, error);
  if (error) {
    device?.free();
    if (signal?.aborted) throw new MigrationError("ECANCELED", "receive aborted");
    throw error;
  }
  return { device: device!, header: header!, bytes, durationMs: performance.now() - started, digest: device!.model.digest() };
}

/**
 * Sends the verdict and closes. After a refusal the sender may still be writing: keep reading
 * (and discarding) briefly so it gets the verdict instead of a reset.
 */
async function reply(socket: Socket, error: MigrationError | undefined): Promise<void> {
  if (socket.destroyed) return;
  socket.setTimeout(0);
  await new Promise<void>((resolve) => {
    const timer = setTimeout(() => socket.destroy(), error ? 2_000 : 10_000);
    socket.once("close", () => {
      clearTimeout(timer);
      resolve();
    });
    socket.on("error", () => undefined);
    socket.on("data", () => undefined);
    socket.end(verdictLine(error));
    socket.resume();
  });
}
