// One client's connection: framing, commands run one at a time in arrival order (the spec's
// ordering rule), replies with backpressure, and the server's own DMA_READ / DMA_WRITE requests
// to the client, whose replies are taken as they arrive even while a command waits for them.
// Everything that waits for the client has a deadline.
import type { Socket } from "node:net";
import { MigrationError } from "../../core/errors.js";
import { DmaWindows } from "./dma.js";
import { MessageReader } from "./framing.js";
import {
  DEFAULT_MAX_DATA_XFER_SIZE,
  errnoOf,
  errnoName,
  FLAG_ERROR,
  FLAG_NO_REPLY,
  FLAG_TYPE_MASK,
  HEADER_SIZE,
  type Header,
  TYPE_COMMAND,
  TYPE_REPLY,
  VfioUserError,
  writeHeader,
} from "./protocol.js";

export interface ConnectionLimits {
  /** The largest message accepted (header included). */
  maxMessageSize: number;
  /** A message begun must be complete within this long. */
  messageTimeoutMs: number;
  /** A DMA_READ / DMA_WRITE the server sends must be answered within this long. */
  dmaTimeoutMs: number;
  maxDmaWindows: number;
}

/**
 * A reply payload in parts, written back to back; `sent` runs once the socket has taken the
 * parts (their memory may then be reused), or the connection is gone.
 */
export interface Reply {
  parts: readonly Uint8Array[];
  sent?: () => void;
}

/** Runs one client command; returns its reply payload. */
export type Dispatch = (
  connection: ClientConnection,
  header: Header,
  payload: Uint8Array,
) => Promise<readonly Uint8Array[] | Reply> | readonly Uint8Array[] | Reply;

interface Queued {
  header: Header;
  payload: Uint8Array;
}

interface PendingRequest {
  command: number;
  resolve: (payload: Uint8Array) => void;
  reject: (error: unknown) => void;
  timer: ReturnType<typeof setTimeout>;
}

/** Commands queued beyond this many bytes while a DMA reply is awaited: the client floods; close. */
const QUEUE_SLACK_MESSAGES = 4;

export class ClientConnection {
  readonly socket: Socket;
  readonly dma: DmaWindows;
  /** Set by VERSION: until then only VERSION is served. */
  negotiated = false;
  /** The client's max_data_xfer_size: the largest count of a DMA message sent to it. */
  clientMaxDataXfer = DEFAULT_MAX_DATA_XFER_SIZE;
  readonly #limits: ConnectionLimits;
  readonly #dispatch: Dispatch;
  readonly #onClosed: () => void;
  #tornDown = false;
  readonly #reader: MessageReader;
  readonly #queue: Queued[] = [];
  #queuedBytes = 0;
  #running = false;
  #closed = false;
  readonly #pending = new Map<number, PendingRequest>();
  #nextId = 0;
  #messageTimer: ReturnType<typeof setTimeout> | undefined;
  #completed = 0;

  /** `onClosed` runs once, as soon as the connection is closed by either side. */
  constructor(socket: Socket, limits: ConnectionLimits, dispatch: Dispatch, onClosed: () => void) {
    this.socket = socket;
    this.#limits = limits;
    this.#dispatch = dispatch;
    this.#onClosed = onClosed;
    this.dma = new DmaWindows(limits.maxDmaWindows);
    this.#reader = new MessageReader(limits.maxMessageSize, {
      message: (header, payload) => this.#message(header, payload),
      violation: (header, errno, message) => {
        // The stream cannot be cut into messages any more: say why, then hang up.
        this.#sendError(header, new VfioUserError(errno, message));
        this.close();
      },
    });
    socket.on("data", (chunk: Buffer) => this.#data(chunk));
    socket.on("error", () => this.close());
    socket.on("close", () => this.#teardown());
  }

  get closed(): boolean {
    return this.#closed;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.socket.destroy();
    this.#teardown();
  }

  /**
   * Sends a command to the client (DMA_READ / DMA_WRITE) and resolves with its reply payload.
   * Rejects with EIO on an error reply or a disconnect, ETIMEDOUT past the deadline.
   */
  request(command: number, parts: readonly Uint8Array[]): Promise<Uint8Array> {
    if (this.#closed) return Promise.reject(new MigrationError("EIO", "the vfio-user client is gone"));
    // The queue bound does not apply while a reply is awaited: reading must go on to see it.
    this.socket.resume();
    let msgId = this.#nextId;
    for (let tries = 0; this.#pending.has(msgId) && tries < 0x10000; tries++) msgId = (msgId + 1) & 0xffff;
    if (this.#pending.has(msgId)) return Promise.reject(new MigrationError("EBUSY", "65536 requests to the client are outstanding"));
    this.#nextId = (msgId + 1) & 0xffff;
    const size = HEADER_SIZE + parts.reduce((n, p) => n + p.length, 0);
    return new Promise<Uint8Array>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(msgId);
        reject(new MigrationError("ETIMEDOUT", `the client did not answer command ${command} within ${this.#limits.dmaTimeoutMs} ms`));
      }, this.#limits.dmaTimeoutMs);
      this.#pending.set(msgId, { command, resolve, reject, timer });
      this.#write({ msgId, command, size, flags: TYPE_COMMAND, error: 0 }, parts);
    });
  }

  #data(chunk: Buffer): void {
    if (this.#closed) return;
    const before = this.#completed;
    this.#reader.push(chunk);
    if (this.#closed) return;
    // The deadline runs from the first byte of an unfinished message: a message completed in
    // this chunk restarts it, a client dripping bytes of one message does not.
    if (!this.#reader.partial) {
      if (this.#messageTimer) clearTimeout(this.#messageTimer);
      this.#messageTimer = undefined;
    } else if (this.#messageTimer === undefined || this.#completed !== before) {
      if (this.#messageTimer) clearTimeout(this.#messageTimer);
      this.#messageTimer = setTimeout(() => this.close(), this.#limits.messageTimeoutMs);
    }
  }

  #message(header: Header, payload: Uint8Array): void {
    this.#completed++;
    if ((header.flags & FLAG_TYPE_MASK) === TYPE_REPLY) {
      const pending = this.#pending.get(header.msgId);
      // A reply to nothing asked (or asked and timed out) is dropped.
      if (!pending || pending.command !== header.command) return;
      this.#pending.delete(header.msgId);
      clearTimeout(pending.timer);
      if ((header.flags & FLAG_ERROR) !== 0) {
        pending.reject(new MigrationError("EIO", `the client refused command ${header.command}: ${errnoName(header.error)}`));
      } else pending.resolve(payload);
      return;
    }
    this.#queue.push({ header, payload });
    this.#queuedBytes += header.size;
    if (this.#queuedBytes > QUEUE_SLACK_MESSAGES * this.#limits.maxMessageSize) {
      // Commands pile up behind a slow one. Stop reading until they are served, unless the
      // slow one waits for the client's reply: then a client still flooding is dropped.
      if (this.#pending.size > 0) {
        this.close();
        return;
      }
      this.socket.pause();
    }
    void this.#run();
  }

  async #run(): Promise<void> {
    if (this.#running) return;
    this.#running = true;
    try {
      while (this.#queue.length > 0 && !this.#closed) {
        const { header, payload } = this.#queue.shift()!;
        this.#queuedBytes -= header.size;
        if (this.#queuedBytes <= this.#limits.maxMessageSize) this.socket.resume();
        let reply: readonly Uint8Array[] | Reply;
        try {
          if ((header.flags & FLAG_TYPE_MASK) !== TYPE_COMMAND)
            throw new VfioUserError("EINVAL", `message type ${header.flags & FLAG_TYPE_MASK} is neither command nor reply`);
          reply = await this.#dispatch(this, header, payload);
        } catch (error) {
          if ((header.flags & FLAG_NO_REPLY) === 0) this.#sendError(header, error);
          continue;
        }
        const { parts, sent } = Array.isArray(reply) ? { parts: reply as readonly Uint8Array[], sent: undefined } : (reply as Reply);
        if ((header.flags & FLAG_NO_REPLY) !== 0 || this.#closed) {
          sent?.();
          continue;
        }
        const size = HEADER_SIZE + parts.reduce((n, p) => n + p.length, 0);
        this.#write({ msgId: header.msgId, command: header.command, size, flags: TYPE_REPLY, error: 0 }, parts, sent);
        // Backpressure with slack: the next command runs while up to two large replies are
        // still on their way out, so producing a reply overlaps sending the previous one.
        if (this.socket.writableLength > 2 * this.#limits.maxMessageSize) await this.#drained();
      }
    } finally {
      this.#running = false;
    }
  }

  /**
   * Waits until the client has taken the replies queued so far. A client that reads none of them
   * within the message deadline is closed: it would otherwise hold the one client slot forever.
   */
  #drained(): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => this.close(), this.#limits.messageTimeoutMs);
      const done = (): void => {
        clearTimeout(timer);
        this.socket.off("drain", done);
        this.socket.off("close", done);
        resolve();
      };
      this.socket.on("drain", done);
      this.socket.on("close", done);
    });
  }

  #sendError(header: Header, error: unknown): void {
    if (this.#closed) return;
    this.#write({ msgId: header.msgId, command: header.command, size: HEADER_SIZE, flags: TYPE_REPLY | FLAG_ERROR, error: errnoOf(error) }, []);
  }

  #write(header: Header, parts: readonly Uint8Array[], sent?: () => void): void {
    if (this.#closed || this.socket.destroyed) {
      sent?.();
      return;
    }
    const head = new Uint8Array(HEADER_SIZE);
    writeHeader(head, header);
    this.socket.cork();
    this.socket.write(head);
    for (const part of parts) if (part.length > 0) this.socket.write(part);
    // The callback of the last write runs once everything before it was handed over too (or
    // with an error when the socket failed): either way the parts are no longer needed.
    this.socket.write(new Uint8Array(0), sent ? () => sent() : undefined);
    this.socket.uncork();
  }

  #teardown(): void {
    this.#closed = true;
    if (this.#tornDown) return;
    this.#tornDown = true;
    if (this.#messageTimer) clearTimeout(this.#messageTimer);
    this.#messageTimer = undefined;
    this.#queue.length = 0;
    this.#queuedBytes = 0;
    for (const [id, pending] of this.#pending) {
      clearTimeout(pending.timer);
      pending.reject(new MigrationError("EIO", "the vfio-user client disconnected before answering"));
      this.#pending.delete(id);
    }
    this.dma.clear();
    this.#onClosed();
  }
}
