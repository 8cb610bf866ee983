// The receiving end: listen, let peers prove themselves, give the migration to the first that
// does, and answer it with the verdict once the state is durably where it was asked to go.
//
// Connections pass the pre-authentication door first (./admission.ts): a bounded table of
// connections being authenticated, each with `authTimeoutMs` to complete its TLS handshake (when
// TLS is on) and deliver a verified stream header, the others waiting unread, and a random early
// drop of those that had their chance when someone waits: no number of silent, dripping or
// stalling peers can lock the real sender out. The first peer with a verified header owns the
// migration; the server then stops listening and the owner's outcome is the result. From then on
// the transfer must keep making progress (PROGRESS_BYTES within each `timeoutMs`). Nothing is
// allocated or written for a peer before it owns the migration, and then only as its stream
// delivers data.
import { createServer as netCreateServer, type AddressInfo, type Server, type Socket } from "node:net";
import { type Server as TlsServer, createServer as tlsCreateServer } from "node:tls";
import { MigrationError } from "../../core/errors.js";
import type { DecoderSummary } from "../../codec/decoder.js";
import type { DirtyTracking } from "../../device/device-model.js";
import { DEFAULT_LIMITS, HEADER_PREFIX, MAGIC } from "../../format/constants.js";
import { parseHeader, parseHeaderPrefix, type StreamHeader } from "../../format/header.js";
import type { ResumingSession } from "../../migration/resuming-session.js";
import { MigrationDevice } from "../../migration/v2/migration-device.js";
import { createFileDecoder } from "../files.js";
import { Admission, type AdmissionOptions } from "./admission.js";
import {
  ChannelGroup,
  ChunkReader,
  checkChannels,
  classifyLead,
  FRAME_HEADER_BYTES,
  LastBytes,
  type Preamble,
  PREAMBLE_BYTES,
  parsePreamble,
  sameId,
} from "./channels.js";
import { checkTimeout, ProgressDeadline, PROGRESS_BYTES } from "./deadline.js";
import { serverTlsOptions, type TransportSecurity } from "./tls.js";
import { endsWithEndRecord, errLine, ioError, okLine, StreamTail, TRAILER_BYTES, TRAILER_MAGIC, verdictProof, END_RECORD_BYTES } from "./verdict.js";

/** Default of `channels`: the most connections one migration may use. */
const DEFAULT_MAX_CHANNELS = 8;

export interface Peer {
  host: string;
  port: number;
}

export interface ListenOptions extends AdmissionOptions {
  port: number;
  /** Interface to listen on. Default 127.0.0.1: exposing a device's state is a deliberate choice. */
  host?: string;
  /** TLS with certificates (client certificates required) or pre-shared keys; plain TCP when absent. */
  tls?: TransportSecurity;
  /**
   * The longest the transfer may go without progress once a peer owns the migration (ms;
   * PROGRESS_BYTES must arrive within each period). Default 60 s. Before that, `authTimeoutMs`
   * (default 10 s) and the other AdmissionOptions apply.
   */
  timeoutMs?: number;
  /**
   * The most channels (connections) one migration may use, 1 to 16: a sender announcing more is
   * refused (E2BIG). Default 8. Each extra channel passes the same door and authentication as the
   * first and must name the migration's random id (see ./channels.ts).
   */
  channels?: number;
  /** Largest state a stream may declare (checked on the header, before anything is allocated). Default 1 GiB. */
  maxStateSize?: number;
  /** Largest record payload accepted. Default 16 MiB. */
  maxRecordPayload?: number;
  /** Most pages the stream may make the target write (see DecoderLimits). Default: the state's pages × (3 + rounds seen). */
  maxPagesApplied?: number;
  signal?: AbortSignal;
  /** Called once the server listens, with the bound address (port 0 picks a free port). */
  onListening?: (address: Peer) => void;
  /** Called when a peer delivered a verified header and owns the migration. */
  onConnection?: (peer: Peer) => void;
  /** Called when a peer was dropped before owning the migration. */
  onDropped?: (peer: Peer, reason: Error) => void;
  /** Called with stream bytes received so far. */
  onProgress?: (bytes: number) => void;
}

/** Where the owner's stream goes. */
export interface StreamSink<R> {
  write(chunk: Uint8Array): void | Promise<void>;
  /** The stream ended: validate and store it. The verdict "OK" goes out once this resolved. */
  finish(): R | Promise<R>;
  /** Gives up: nothing may remain of the stream. */
  abort(): void;
}

export interface Received<R> {
  result: R;
  header: StreamHeader;
  peer: Peer;
  /** Stream bytes received. */
  bytes: number;
  durationMs: number;
  /** Connections the migration used. */
  channels: number;
}

interface Owner {
  socket: Socket;
  chunks: AsyncIterator<Buffer>;
  header: StreamHeader;
  /** The header and whatever followed it in the same read. */
  first: Uint8Array[];
  peer: Peer;
  /** The migration's channels, when the owner announced more than one (./channels.ts). */
  group: ChannelGroup | undefined;
  /** Stops accepting connections (idempotent): the migration needs no more channels. */
  closeDoor: () => void;
}

/**
 * Listens, hands the first peer that authenticates and delivers a verified header to `open`,
 * feeds its stream to the sink, and answers "OK" once the sink finished (or "ERR code message").
 * Resolves with the sink's result or rejects with the owner's error.
 */
export async function receiveStream<R>(
  options: ListenOptions,
  open: (header: StreamHeader, peer: Peer) => StreamSink<R> | Promise<StreamSink<R>>,
): Promise<Received<R>> {
  const { signal } = options;
  const timeoutMs = checkTimeout(options.timeoutMs);
  const limits = {
    maxStateSize: options.maxStateSize ?? DEFAULT_LIMITS.maxStateSize,
    maxRecordPayload: options.maxRecordPayload ?? DEFAULT_LIMITS.maxRecordPayload,
  };
  if (signal?.aborted) throw new MigrationError("ECANCELED", "receive aborted before it started");
  const owner = await acceptOwner(options, limits);
  const { socket, chunks, header, peer } = owner;
  const started = performance.now();
  options.onConnection?.(peer);

  let bytes = 0;
  let sink: StreamSink<R> | undefined;
  let result: R | undefined;
  let error: MigrationError | undefined;
  const deadline = new ProgressDeadline(timeoutMs, () => {
    const stalled = new MigrationError(
      "ETIMEDOUT",
      `no progress from ${peer.host}:${peer.port} for ${timeoutMs} ms (at least ${PROGRESS_BYTES / 1024} KiB must arrive in each such period)`,
    );
    // Every channel, and every wait for one that has not joined, ends with it.
    owner.group?.fail(stalled);
    socket.destroy(stalled);
  });
  const onAbort = (): void => {
    const aborted = new MigrationError("ECANCELED", "receive aborted");
    owner.group?.fail(aborted);
    socket.destroy(aborted);
  };
  signal?.addEventListener("abort", onAbort, { once: true });
  // The stream goes to the sink as it arrives, but for the trailer the sender writes after it.
  const tail = new StreamTail();
  let proof = "";
  try {
    sink = await open(header, peer);
    if (owner.group) {
      const deliver = async (part: Uint8Array): Promise<void> => {
        bytes += part.length;
        await sink!.write(part);
        options.onProgress?.(bytes);
      };
      const { nonce, streamEnd } = await readChannels(owner.group, owner.first[0]!, deadline, deliver, () => bytes);
      // The end of the stream is progress; storing it (fsync, rename, commit) gets a full period.
      deadline.restart();
      result = await sink.finish();
      proof = verdictProof(bytes, streamEnd, nonce);
    } else {
      const take = async (chunk: Uint8Array): Promise<void> => {
        deadline.moved(chunk.length);
        for (const part of tail.push(chunk)) {
          bytes += part.length;
          await sink!.write(part);
        }
        options.onProgress?.(bytes);
      };
      for (const chunk of owner.first) await take(chunk);
      // Pulling chunk by chunk gives backpressure: the socket is read no faster than the sink
      // takes it, while the kernel keeps receiving into its buffer (reads overlap decoding).
      for (;;) {
        const next = await chunks.next();
        if (next.done) break;
        await take(next.value);
      }
      const end = tail.end();
      if ("rest" in end) {
        bytes += end.rest.length;
        await sink.write(end.rest);
        // A cut stream: the sink names where it stopped (and throws). A complete one without a
        // trailer comes from a sender older than the verdict proof.
        if (!endsWithEndRecord(tail.streamEnd, bytes)) await sink.finish();
        throw new MigrationError(
          "EPROTONOSUPPORT",
          "the sender did not follow the stream with the verdict nonce (a migstream sender older than the verdict proof): upgrade it",
        );
      }
      // The end of the stream is progress; storing it (fsync, rename, commit) gets a full period.
      deadline.restart();
      result = await sink.finish();
      proof = verdictProof(bytes, tail.streamEnd, end.nonce);
    }
  } catch (caught) {
    error = asReceiveError(caught, bytes);
    sink?.abort();
  } finally {
    deadline.stop();
    signal?.removeEventListener("abort", onAbort);
  }
  owner.closeDoor();
  // One verdict for the whole migration, on channel 0, after the commit.
  await reply(socket, error ? errLine(error) : okLine(bytes, proof), error !== undefined);
  owner.group?.close();
  if (error) {
    if (signal?.aborted) throw new MigrationError("ECANCELED", "receive aborted");
    throw error;
  }
  return { result: result as R, header, peer, bytes, durationMs: performance.now() - started, channels: owner.group?.count ?? 1 };
}

/**
 * Reads a migration's stream from its channels: the header (already verified, from channel 0),
 * then frame k from channel k mod count, in order, until the end frame, which every channel must
 * carry; then the verdict trailer from channel 0. Frames go to `deliver` as they arrive, piece
 * by piece: nothing is allocated on a frame's claimed length.
 */
async function readChannels(
  group: ChannelGroup,
  header: Uint8Array,
  deadline: ProgressDeadline,
  deliver: (part: Uint8Array) => Promise<void>,
  received: () => number,
): Promise<{ nonce: Uint8Array; streamEnd: Uint8Array }> {
  const last = new LastBytes(END_RECORD_BYTES);
  last.push(header);
  await deliver(header);
  const cut = (index: number) => (): MigrationError =>
    new MigrationError("ENODATA", `incomplete stream: channel ${index} ended after ${received()} stream bytes`, { byteOffset: received() });
  const frame = async (index: number): Promise<{ length: number; tag: number; reader: ChunkReader }> => {
    const { reader } = await group.wait(index);
    const head = await reader.exact(FRAME_HEADER_BYTES, cut(index));
    const view = new DataView(head.buffer);
    return { length: view.getUint32(0, true), tag: view.getUint32(4, true), reader };
  };
  const misplaced = (index: number, tag: number, due: number): MigrationError =>
    new MigrationError("EBADMSG", `channel ${index}: frame ${tag} where frame ${due >>> 0} was due`, { byteOffset: received() });
  let seq = 0;
  for (; ; seq++) {
    const index = seq % group.count;
    const { length, tag, reader } = await frame(index);
    if (tag !== seq >>> 0) throw misplaced(index, tag, seq);
    if (length === 0) break;
    for (let left = length; left > 0; ) {
      const part = await reader.some(left);
      if (!part) throw cut(index)();
      left -= part.length;
      deadline.moved(part.length);
      last.push(part);
      await deliver(part);
    }
  }
  // The end: on every channel, so that none of them may still carry stream bytes.
  for (let index = 0; index < group.count; index++) {
    if (index === seq % group.count) continue;
    const { length, tag } = await frame(index);
    if (length !== 0 || tag !== seq >>> 0) throw misplaced(index, tag, seq);
  }
  const { reader } = await group.wait(0);
  const trailer = await reader.exact(TRAILER_BYTES, cut(0));
  if (!TRAILER_MAGIC.every((b, i) => trailer[i] === b)) throw new MigrationError("EBADMSG", "channel 0: no verdict trailer after the end frame");
  return { nonce: trailer.subarray(TRAILER_MAGIC.length), streamEnd: last.bytes };
}

/** Our own errors are the verdict; anything else on the socket means the stream was cut. */
function asReceiveError(caught: unknown, bytes: number): MigrationError {
  if (caught instanceof MigrationError) return caught;
  const reason = caught instanceof Error ? caught.message : String(caught);
  return new MigrationError("ENODATA", `incomplete stream: connection dropped after ${bytes} bytes (${reason})`, { byteOffset: bytes });
}

/**
 * Listens until one peer authenticates and delivers a verified header; drops the others. Every
 * connection passes the pre-authentication door (./admission.ts) first.
 */
function acceptOwner(options: ListenOptions, limits: { maxStateSize: number; maxRecordPayload: number }): Promise<Owner> {
  const { signal, host = "127.0.0.1", port } = options;
  /** Connections whose drop was already reported (once per connection). */
  const reported = new WeakSet<Socket>();
  /** A TLS server's raw connections until their handshake ends, by peer address (how TLS sockets are matched to them). */
  const raws = new Map<string, Socket>();
  const keyOf = (s: Socket): string => `${s.remoteAddress}|${s.remotePort}`;
  const peerOf = (s: Socket): Peer => ({ host: s.remoteAddress ?? "?", port: s.remotePort ?? 0 });
  const pending = new Set<Socket>();
  let server: Server;
  let tlsServer: TlsServer | undefined;
  return new Promise<Owner>((resolve, reject) => {
    /** An owner was chosen (its channels may still be joining). */
    let decided = false;
    /** Nothing more is accepted: the listener and the admission are closed. */
    let doorClosed = false;
    let group: ChannelGroup | undefined;
    // Extra channels that arrive before their owner wait for this (the owner's group, or none).
    let settleGroup: (g: ChannelGroup | undefined) => void = () => undefined;
    const groupReady = {
      promise: new Promise<ChannelGroup | undefined>((resolve) => (settleGroup = resolve)),
      resolve: (g: ChannelGroup | undefined) => settleGroup(g),
    };
    const maxChannels = checkChannels(options.channels ?? DEFAULT_MAX_CHANNELS, "channels");
    const report = (socket: Socket, reason: Error): void => {
      if (doorClosed || reported.has(socket)) return;
      reported.add(socket);
      options.onDropped?.(peerOf(socket), reason);
    };
    const admission = new Admission(options, {
      admit: (raw) => {
        if (tlsServer) {
          raws.set(keyOf(raw), raw);
          raw.once("close", () => {
            if (raws.get(keyOf(raw)) === raw) raws.delete(keyOf(raw));
          });
          tlsServer.emit("connection", raw);
        } else void candidate(raw, raw, undefined);
      },
      dropped: (raw, _reason, error) => report(raw, error),
    });
    /** Stops accepting: once the owner is known (one channel) or all its channels joined, or the migration is over. */
    const closeDoor = (): void => {
      if (doorClosed) return;
      doorClosed = true;
      decided = true;
      groupReady.resolve(undefined);
      signal?.removeEventListener("abort", onAbort);
      server.close();
      admission.close();
      for (const s of pending) s.destroy();
      pending.clear();
      raws.clear();
    };
    const onAbort = (): void => {
      if (decided) return;
      closeDoor();
      reject(new MigrationError("ECANCELED", "receive aborted while waiting for a connection"));
    };

    /**
     * Reads a header (or a channel preamble) from `socket`. Plain TCP: `raw` is the socket, still
     * in the admission table (its deadline is the table's). TLS: the handshake is done, and the
     * header must come within `leftMs`.
     */
    const candidate = async (socket: Socket, raw: Socket, leftMs: number | undefined): Promise<void> => {
      const peer = peerOf(socket);
      if (doorClosed) {
        socket.destroy();
        return;
      }
      pending.add(socket);
      socket.setNoDelay(true);
      socket.on("error", () => undefined);
      const timer =
        leftMs === undefined
          ? undefined
          : setTimeout(() => {
              socket.destroy(new MigrationError("ETIMEDOUT", `no verified header within ${admission.authTimeoutMs} ms of being admitted`));
            }, leftMs);
      const chunks = socket.iterator({ destroyOnReturn: false })[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
      const reader = new ChunkReader(chunks);
      let skipped = 0;
      const cut = (have: number): MigrationError =>
        new MigrationError("ENODATA", `incomplete stream: the connection ended inside the header, after ${have + skipped} bytes`, {
          recordIndex: 0,
          byteOffset: have + skipped,
        });
      let quiet = false;
      try {
        // Garbage (a port scan, a plaintext HTTP probe) is refused on its first bytes.
        const lead = await reader.exact(MAGIC.length, cut, (part) => classifyLead(part));
        let prefix = lead;
        let preamble: Preamble | undefined;
        if (classifyLead(lead)) {
          const rest = await reader.exact(PREAMBLE_BYTES - lead.length, (have) => cut(have + lead.length));
          const whole = new Uint8Array(PREAMBLE_BYTES);
          whole.set(lead);
          whole.set(rest, lead.length);
          preamble = parsePreamble(whole, maxChannels);
          if (preamble.index > 0) {
            quiet = true;
            await join(socket, raw, reader, preamble);
            clearTimeout(timer);
            return;
          }
          skipped = PREAMBLE_BYTES;
          prefix = await reader.exact(HEADER_PREFIX, cut);
        } else {
          const more = await reader.exact(HEADER_PREFIX - lead.length, (have) => cut(have + lead.length));
          prefix = new Uint8Array(HEADER_PREFIX);
          prefix.set(lead);
          prefix.set(more, lead.length);
        }
        const full = new Uint8Array(parseHeaderPrefix(prefix, DEFAULT_LIMITS.maxHeaderSize));
        full.set(prefix);
        full.set(await reader.exact(full.length - HEADER_PREFIX, (have) => cut(have + HEADER_PREFIX)), HEADER_PREFIX);
        const header = parseHeader(full, limits);
        clearTimeout(timer);
        if (decided) {
          // The door stays open after an owner only for its channels.
          quiet = true;
          throw new MigrationError("EBUSY", "a migration is already under way");
        }
        pending.delete(socket);
        admission.authenticated(raw);
        decided = true;
        group = preamble ? new ChannelGroup(preamble, { socket, reader }) : undefined;
        groupReady.resolve(group);
        if (!group) closeDoor();
        resolve({ socket, chunks, header, first: [full, ...reader.held()], peer, group, closeDoor });
      } catch (caught) {
        clearTimeout(timer);
        pending.delete(socket);
        report(raw, caught instanceof Error ? caught : new Error(String(caught)));
        // A refused header is worth telling (an honest sender with a bad stream learns why); a
        // timed-out, dropped or broken connection, or a channel nobody asked for, just goes.
        if (!quiet && caught instanceof MigrationError && caught.code !== "ETIMEDOUT" && !socket.destroyed) void reply(socket, errLine(caught), true);
        else socket.destroy();
      }
    };

    /**
     * An extra channel: it joins the owner's migration when it names its id and a free index.
     * It may arrive before the owner's header was verified: it then waits for it, within its own
     * authentication deadline (the admission's, or the TLS timer that destroys the socket).
     */
    const join = async (socket: Socket, raw: Socket, reader: ChunkReader, preamble: Preamble): Promise<void> => {
      // Waiting for its owner, it is no victim of random early drop: a flood must not cost a
      // migration a channel it already opened (bounded; see Admission.shield).
      admission.shield(raw);
      let onClose: (() => void) | undefined;
      const closed = new Promise<never>((_, reject) => {
        onClose = () => reject(new MigrationError("ETIMEDOUT", "the channel closed while waiting for its migration"));
        socket.once("close", onClose);
      });
      closed.catch(() => undefined);
      let owner: ChannelGroup | undefined;
      try {
        owner = await Promise.race([groupReady.promise, closed]);
      } finally {
        if (onClose) socket.off("close", onClose);
      }
      if (!owner || !sameId(owner.id, preamble.id) || owner.count !== preamble.count) {
        throw new MigrationError("EBADMSG", "channel of an unknown migration (wrong migration id or channel count)");
      }
      if (socket.destroyed || !owner.offer(preamble.index, { socket, reader })) {
        throw new MigrationError("EBADMSG", `channel ${preamble.index} of this migration is already open`);
      }
      pending.delete(socket);
      admission.authenticated(raw);
      if (owner.complete) closeDoor();
    };

    // Connections arrive paused: nothing is read (no TLS state is even made) before admission.
    server = netCreateServer({ allowHalfOpen: true, pauseOnConnect: true }, (raw) => {
      if (doorClosed) raw.destroy();
      else admission.offer(raw);
    });
    if (options.tls) {
      // Never listens itself: the admission hands it the connections it admits.
      tlsServer = tlsCreateServer({ ...serverTlsOptions(options.tls), allowHalfOpen: true, handshakeTimeout: admission.authTimeoutMs });
      tlsServer.on("secureConnection", (socket: Socket) => {
        const raw = raws.get(keyOf(socket));
        raws.delete(keyOf(socket));
        if (!raw) {
          socket.destroy();
          return;
        }
        // Authenticated: out of the table (it cannot be dropped to make room any more), with
        // what is left of its time to deliver the header.
        const left = admission.remainingMs(raw);
        admission.authenticated(raw);
        void candidate(socket, raw, left);
      });
      tlsServer.on("tlsClientError", (error, socket) => {
        const raw = raws.get(keyOf(socket)) ?? socket;
        report(raw, error);
        socket.destroy();
        raw.destroy();
      });
    }
    signal?.addEventListener("abort", onAbort, { once: true });
    server.once("error", (error) => {
      if (decided) return;
      closeDoor();
      reject(ioError(`cannot listen on ${host}:${port}`, error));
    });
    server.listen({ host, port }, () => {
      const address = server.address() as AddressInfo;
      options.onListening?.({ host: address.address, port: address.port });
    });
  });
}

/**
 * Sends the verdict line and closes. After a refusal the sender may still be writing: keep
 * reading (and discarding) briefly so it gets the verdict instead of a reset.
 */
function reply(socket: Socket, line: string, refusal: boolean): Promise<void> {
  if (socket.destroyed) return Promise.resolve();
  return new Promise<void>((resolve) => {
    const timer = setTimeout(() => socket.destroy(), refusal ? 2_000 : 10_000);
    socket.once("close", () => {
      clearTimeout(timer);
      resolve();
    });
    socket.on("error", () => undefined);
    socket.on("data", () => undefined);
    socket.end(line);
    socket.resume();
  });
}

// ---------------------------------------------------------------------------------------------
// Into a device, into a file

export interface ReceiveOptions extends ListenOptions {
  /** Compatibility id the stream must carry. Default: accept the stream's own id. */
  deviceId?: string;
  /** Dirty tracking of the receiving device (it may migrate on later). Default "explicit". */
  tracking?: DirtyTracking;
  /** State to enter after RESUMING validated. Default "RUNNING", as a migrated device resumes. */
  final?: "RUNNING" | "STOP";
}

export interface ReceiveResult {
  /** The device, resumed with the migrated state (the caller frees it). */
  device: MigrationDevice;
  header: StreamHeader;
  peer: Peer;
  /** Stream bytes received. */
  bytes: number;
  durationMs: number;
  digest: bigint;
  /** Connections the migration used. */
  channels: number;
}

function checkDeviceId(expected: string | undefined, header: StreamHeader): void {
  if (expected !== undefined && expected !== header.deviceId) {
    // Refused before allocating anything for a stream that would be refused anyway.
    throw new MigrationError("ENODEV", `stream is for device ${JSON.stringify(header.deviceId)}, expected ${JSON.stringify(expected)}`, {
      recordIndex: 0,
      byteOffset: 48,
    });
  }
}

/**
 * Receives one migration into a new device laid out as the stream's header says: RESUMING
 * takes every byte and is left when the stream ends, which validates it; "OK" goes out only
 * once the device reached `final`. Resolves with the device or rejects with the error.
 */
export async function receiveDevice(options: ReceiveOptions): Promise<ReceiveResult> {
  const received = await receiveStream<MigrationDevice>(options, async (header) => {
    checkDeviceId(options.deviceId, header);
    const device = new MigrationDevice({
      regions: header.regions,
      pageSize: header.pageSize,
      deviceId: options.deviceId ?? header.deviceId,
      ...(options.tracking ? { tracking: options.tracking } : {}),
      limits: {
        maxStateSize: options.maxStateSize ?? DEFAULT_LIMITS.maxStateSize,
        maxRecordPayload: options.maxRecordPayload ?? DEFAULT_LIMITS.maxRecordPayload,
        maxHeaderSize: DEFAULT_LIMITS.maxHeaderSize,
        ...(options.maxPagesApplied !== undefined ? { maxPagesApplied: options.maxPagesApplied } : {}),
      },
    });
    let session: ResumingSession;
    try {
      await device.setState("STOP");
      session = (await device.setState("RESUMING")) as ResumingSession;
    } catch (error) {
      device.free();
      throw error;
    }
    return {
      write: (chunk) => {
        session.write(chunk);
      },
      // Leaving RESUMING is the validation point: a bad stream fails here (the device is then
      // in ERROR with its previous content) and is freed by abort().
      finish: async () => {
        await device.setState(options.final ?? "RUNNING");
        return device;
      },
      abort: () => device.free(),
    };
  });
  const device = received.result;
  return {
    device,
    header: received.header,
    peer: received.peer,
    bytes: received.bytes,
    durationMs: received.durationMs,
    digest: device.model.digest(),
    channels: received.channels,
  };
}

export interface ReceiveFileOptions extends ListenOptions {
  /** Compatibility id the stream must carry. Default: accept the stream's own id. */
  deviceId?: string;
  /**
   * Runs after the file was stored and before the verdict, with its path: a failure here is
   * the verdict (e.g. copying it on to stdout).
   */
  deliver?: (path: string) => Promise<void>;
}

export interface ReceiveFileResult extends Omit<Received<DecoderSummary>, "result"> {
  summary: DecoderSummary;
}

/**
 * Receives one migration straight into the snapshot file `output`: records are applied to a
 * temporary file as they verify, and it is fsynced and renamed over `output` once the whole
 * stream verified. "OK" goes out only after that; nothing is left behind on failure.
 */
export async function receiveFile(output: string, options: ReceiveFileOptions): Promise<ReceiveFileResult> {
  const received = await receiveStream<DecoderSummary>(options, (header) => {
    checkDeviceId(options.deviceId, header);
    const decoder = createFileDecoder(output, {
      ...(options.deviceId !== undefined ? { deviceId: options.deviceId } : {}),
      ...(options.maxStateSize !== undefined ? { maxStateSize: options.maxStateSize } : {}),
      ...(options.maxRecordPayload !== undefined ? { maxRecordPayload: options.maxRecordPayload } : {}),
      ...(options.maxPagesApplied !== undefined ? { maxPagesApplied: options.maxPagesApplied } : {}),
    });
    return {
      write: (chunk) => decoder.push(chunk),
      finish: async () => {
        decoder.end();
        await options.deliver?.(output);
        return decoder.summary();
      },
      abort: () => decoder.abort(),
    };
  });
  const { result, ...rest } = received;
  return { ...rest, summary: result };
}
