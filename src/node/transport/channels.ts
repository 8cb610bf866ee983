// Several connections for one migration (like QEMU's multifd): the pieces both ends share.
//
// With `channels` > 1 every connection starts with a preamble: CHANNEL_MAGIC, the migration's
// random 16-byte id, the connection's index and the channel count. Channel 0 then carries the
// stream header as is (the receiver verifies it as it does for one connection, and the header
// makes channel 0 the owner of the migration); after the header, the rest of the stream travels
// in frames, frame k on channel k mod count: [u32 length][u32 k][length stream bytes]. A frame of
// length 0 ends the stream: every channel carries one (with the same k, the number of data
// frames), and channel 0 follows its own with the verdict trailer (./verdict.ts). The receiver
// reads frame k from channel k mod count, so it applies the stream in its original order (a
// later round never overtakes an earlier one, the config and the end come last) and never holds
// more than one frame header per channel: what sits in the sockets' buffers is all it buffers.
// With one channel nothing of this is on the wire: the stream is what it always was.
import { randomBytes } from "node:crypto";
import type { Socket } from "node:net";
import { MigrationError } from "../../core/errors.js";
import { MAGIC } from "../../format/constants.js";
import { checkMagic } from "../../format/header.js";

/** The most connections one migration may use. */
export const MAX_CHANNELS = 16;
/** "\x89MCH\r\n\x1a\n": differs from the stream magic at its third byte. */
export const CHANNEL_MAGIC = Uint8Array.of(0x89, 0x4d, 0x43, 0x48, 0x0d, 0x0a, 0x1a, 0x0a);
export const MIGRATION_ID_BYTES = 16;
/** magic (8), migration id (16), index (u16), count (u16), reserved (u32, zero). */
export const PREAMBLE_BYTES = 32;
export const FRAME_HEADER_BYTES = 8;

export interface Preamble {
  id: Uint8Array;
  index: number;
  count: number;
}

/** Checks a user-supplied channel count (1..MAX_CHANNELS). */
export function checkChannels(channels: number | undefined, what = "channels"): number {
  const value = channels ?? 1;
  if (!Number.isInteger(value) || value < 1 || value > MAX_CHANNELS) {
    throw new MigrationError("EINVAL", `${what} must be an integer from 1 to ${MAX_CHANNELS}, got ${value}`);
  }
  return value;
}

export function newMigrationId(): Uint8Array {
  return new Uint8Array(randomBytes(MIGRATION_ID_BYTES));
}

export function encodePreamble({ id, index, count }: Preamble): Uint8Array {
  const bytes = new Uint8Array(PREAMBLE_BYTES);
  const view = new DataView(bytes.buffer);
  bytes.set(CHANNEL_MAGIC);
  bytes.set(id, CHANNEL_MAGIC.length);
  view.setUint16(24, index, true);
  view.setUint16(26, count, true);
  return bytes;
}

function protocolError(message: string, byteOffset: number): MigrationError {
  return new MigrationError("EBADMSG", `channel preamble: ${message}`, { byteOffset });
}

/** Parses a preamble; `maxChannels` is the most this receiver accepts. */
export function parsePreamble(bytes: Uint8Array, maxChannels: number): Preamble {
  const view = new DataView(bytes.buffer, bytes.byteOffset, PREAMBLE_BYTES);
  for (let i = 0; i < CHANNEL_MAGIC.length; i++) if (bytes[i] !== CHANNEL_MAGIC[i]) throw protocolError("bad magic", 0);
  const index = view.getUint16(24, true);
  const count = view.getUint16(26, true);
  if (view.getUint32(28, true) !== 0) throw protocolError("reserved field is not zero (a newer sender?)", 28);
  if (count < 2) throw protocolError(`channel count ${count} (a preamble is only sent for 2 or more)`, 26);
  if (count > maxChannels) {
    throw new MigrationError("E2BIG", `the sender wants ${count} channels, this receiver accepts at most ${maxChannels}`, { byteOffset: 26 });
  }
  if (index >= count) throw protocolError(`channel index ${index} is not below the count ${count}`, 24);
  return { id: bytes.slice(CHANNEL_MAGIC.length, CHANNEL_MAGIC.length + MIGRATION_ID_BYTES), index, count };
}

/**
 * Refuses garbage on its first bytes: what a connection sent so far must begin the stream magic
 * or the channel magic. Returns true once it is known to be a channel preamble.
 */
export function classifyLead(received: Uint8Array): boolean | undefined {
  const n = Math.min(received.length, MAGIC.length);
  const isStream = received.subarray(0, n).every((b, i) => b === MAGIC[i]);
  const isChannel = received.subarray(0, n).every((b, i) => b === CHANNEL_MAGIC[i]);
  // Neither: the stream's own refusal, which also names a TLS handshake sent to a plain receiver.
  if (!isStream && !isChannel) checkMagic(received);
  return n < MAGIC.length ? undefined : isChannel;
}

export function frameHeader(length: number, seq: number): Uint8Array {
  const bytes = new Uint8Array(FRAME_HEADER_BYTES);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, length, true);
  view.setUint32(4, seq >>> 0, true);
  return bytes;
}

export function sameId(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/**
 * Reads a connection's chunks by exact amounts, keeping what is left of a chunk for the next
 * read. Never allocates on a peer's claim: `some` hands out views of what arrived.
 */
export class ChunkReader {
  readonly #chunks: AsyncIterator<Uint8Array>;
  #held: Uint8Array[];
  /** Bytes read from the connection so far. */
  consumed = 0;

  constructor(chunks: AsyncIterator<Uint8Array>, held: Uint8Array[] = []) {
    this.#chunks = chunks;
    this.#held = held.filter((c) => c.length > 0);
  }

  /** Up to `max` bytes (a view), or undefined at the end of the connection. */
  async some(max: number): Promise<Uint8Array | undefined> {
    if (this.#held.length === 0) {
      const next = await this.#chunks.next();
      if (next.done) return undefined;
      this.#held.push(next.value);
      if (next.value.length === 0) return this.some(max);
    }
    const first = this.#held[0]!;
    const part = first.length <= max ? first : first.subarray(0, max);
    if (first.length <= max) this.#held.shift();
    else this.#held[0] = first.subarray(max);
    this.consumed += part.length;
    return part;
  }

  /** Exactly `n` bytes (small n: frame headers, preambles); `onEnd` explains a connection that ended first. */
  async exact(n: number, onEnd: (have: number) => MigrationError, onPart?: (have: Uint8Array) => void): Promise<Uint8Array> {
    const out = new Uint8Array(n);
    let have = 0;
    while (have < n) {
      const part = await this.some(n - have);
      if (!part) throw onEnd(have);
      out.set(part, have);
      have += part.length;
      onPart?.(out.subarray(0, have));
    }
    return out;
  }

  /** What was received but not read yet. */
  held(): Uint8Array[] {
    return this.#held;
  }
}

/** The last END-record's worth of stream bytes (the verdict proof hashes its digest). */
export class LastBytes {
  #last: Uint8Array = new Uint8Array(0);
  constructor(readonly size: number) {}

  push(part: Uint8Array): void {
    if (part.length >= this.size) {
      this.#last = part.slice(part.length - this.size);
      return;
    }
    const joined = new Uint8Array(Math.min(this.size, this.#last.length + part.length));
    const keep = joined.length - part.length;
    joined.set(this.#last.subarray(this.#last.length - keep));
    joined.set(part, keep);
    this.#last = joined;
  }

  get bytes(): Uint8Array {
    return this.#last;
  }
}

export interface JoinedChannel {
  socket: Socket;
  reader: ChunkReader;
}

/**
 * The receiver's side of one migration's channels: which have joined (each index once), and
 * waits for those that have not, ended by `fail` (a deadline, an abort, another channel's
 * failure): nothing waits for a channel that never comes beyond the receiver's deadlines.
 */
export class ChannelGroup {
  readonly id: Uint8Array;
  readonly count: number;
  readonly #joined: (JoinedChannel | undefined)[];
  readonly #waiters = new Map<number, { resolve: (c: JoinedChannel) => void; reject: (e: Error) => void }>();
  #failure: Error | undefined;

  constructor(preamble: Preamble, owner: JoinedChannel) {
    this.id = preamble.id;
    this.count = preamble.count;
    this.#joined = new Array<JoinedChannel | undefined>(preamble.count).fill(undefined);
    this.#joined[0] = owner;
  }

  /** Adds a channel; false when its index is taken (or the group failed). */
  offer(index: number, channel: JoinedChannel): boolean {
    if (this.#failure || this.#joined[index]) return false;
    this.#joined[index] = channel;
    this.#waiters.get(index)?.resolve(channel);
    this.#waiters.delete(index);
    return true;
  }

  get complete(): boolean {
    return this.#joined.every((c) => c !== undefined);
  }

  wait(index: number): Promise<JoinedChannel> {
    const joined = this.#joined[index];
    if (joined) return Promise.resolve(joined);
    if (this.#failure) return Promise.reject(this.#failure);
    return new Promise((resolve, reject) => this.#waiters.set(index, { resolve, reject }));
  }

  /** Ends every wait with `error` and cuts the extra channels. */
  fail(error: Error): void {
    this.#failure ??= error;
    for (const waiter of this.#waiters.values()) waiter.reject(this.#failure);
    this.#waiters.clear();
    for (const channel of this.#joined.slice(1)) channel?.socket.destroy();
  }

  /** The migration is over: the extra channels close (channel 0 carries the verdict). */
  close(): void {
    this.fail(new MigrationError("ECANCELED", "the migration is over"));
  }
}
