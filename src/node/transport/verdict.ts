// The receiver's one-line answer, its framing and parsing, shared by both ends, and the proof
// that it read the whole stream.
//
// After the stream the sender writes a trailer: TRAILER_MAGIC and a fresh random nonce (inside
// TLS when TLS is on). The receiver answers "OK <bytes> <proof>\n" once the state is durably
// where it was asked to go, where the proof is SHA-256 over the stream's byte count, its end
// digest (the END record's digest field) and the nonce; or "ERR <code> <message>\n". The nonce
// comes after every stream byte, so a peer that did not read to the end cannot answer, however
// predictable the stream is (encoding the same snapshot gives the same bytes, count and digest).
// The byte count names the stream bytes the receiver took: an OK for another count is refused too.
import { concatBytes } from "../../core/bytes.js";
import { createHash, randomBytes } from "node:crypto";
import { MigrationError, type MigrationErrorCode } from "../../core/errors.js";

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
export const MAX_VERDICT = 4096;

/** What follows the stream: "MSNONCE1", then NONCE_BYTES random bytes. */
export const TRAILER_MAGIC = new TextEncoder().encode("MSNONCE1");
export const NONCE_BYTES = 32;
export const TRAILER_BYTES = TRAILER_MAGIC.length + NONCE_BYTES;
/** An END record: 24 bytes of record header, 24 of payload (count, byte count, digest), 8 of checksum. */
export const END_RECORD_BYTES = 56;
const END_TAG = 0x12;

/** The trailer a sender writes after its stream, with a fresh nonce. */
export function makeTrailer(): Uint8Array {
  const trailer = new Uint8Array(TRAILER_BYTES);
  trailer.set(TRAILER_MAGIC);
  trailer.set(randomBytes(NONCE_BYTES), TRAILER_MAGIC.length);
  return trailer;
}

/**
 * The proof of reading: SHA-256 (hex) of a label, the stream's byte count (le64), its end digest
 * (the 8 bytes of the END record's digest field, `streamEnd` being the stream's last bytes) and
 * the nonce.
 */
export function verdictProof(bytes: number, streamEnd: Uint8Array, nonce: Uint8Array): string {
  const count = new Uint8Array(8);
  new DataView(count.buffer).setBigUint64(0, BigInt(bytes), true);
  const digest = streamEnd.subarray(Math.max(0, streamEnd.length - 16), Math.max(0, streamEnd.length - 8));
  return createHash("sha256").update("migstream verdict 1\0").update(count).update(digest).update(nonce).digest("hex");
}

/** True when `streamEnd` (the last bytes of `bytes` stream bytes) is an END record: the stream looks complete. */
export function endsWithEndRecord(streamEnd: Uint8Array, bytes: number): boolean {
  if (streamEnd.length < END_RECORD_BYTES) return false;
  const view = new DataView(streamEnd.buffer, streamEnd.byteOffset + streamEnd.length - END_RECORD_BYTES, END_RECORD_BYTES);
  return view.getUint8(0) === END_TAG && view.getUint32(4, true) === 24 && view.getBigUint64(32, true) === BigInt(bytes - END_RECORD_BYTES);
}

/**
 * Splits what a sender wrote into the stream (passed on as it arrives) and the trailer (held back:
 * the last TRAILER_BYTES), remembering the stream's last bytes (its END record) for the proof.
 */
export class StreamTail {
  #held: Uint8Array = new Uint8Array(0);
  #last: Uint8Array = new Uint8Array(0);

  /** The stream bytes of `chunk` that can be passed on (views of `chunk` where possible). */
  push(chunk: Uint8Array): Uint8Array[] {
    const total = this.#held.length + chunk.length;
    if (total <= TRAILER_BYTES) {
      this.#held = concatBytes([this.#held, chunk]);
      return [];
    }
    let out: Uint8Array[];
    if (chunk.length >= TRAILER_BYTES) {
      out = [this.#held, chunk.subarray(0, chunk.length - TRAILER_BYTES)];
      this.#held = chunk.slice(chunk.length - TRAILER_BYTES);
    } else {
      const both = concatBytes([this.#held, chunk]);
      out = [both.subarray(0, total - TRAILER_BYTES)];
      this.#held = both.slice(total - TRAILER_BYTES);
    }
    out = out.filter((part) => part.length > 0);
    for (const part of out) this.#remember(part);
    return out;
  }

  /**
   * At the end of the connection: the nonce when the held-back bytes are a trailer; otherwise
   * they were stream bytes (`rest`, to pass on: a sender without a trailer, or a cut stream).
   */
  end(): { nonce: Uint8Array } | { rest: Uint8Array } {
    const held = this.#held;
    if (held.length === TRAILER_BYTES && TRAILER_MAGIC.every((b, i) => held[i] === b)) return { nonce: held.subarray(TRAILER_MAGIC.length) };
    this.#remember(held);
    return { rest: held };
  }

  /** The last stream bytes passed on (up to an END record's worth). */
  get streamEnd(): Uint8Array {
    return this.#last;
  }

  #remember(part: Uint8Array): void {
    const joined = part.length >= END_RECORD_BYTES ? part.subarray(part.length - END_RECORD_BYTES) : concatBytes([this.#last, part]);
    this.#last = joined.slice(Math.max(0, joined.length - END_RECORD_BYTES));
  }
}

/**
 * Parses "OK <bytes> <proof>" / "ERR <code> <message>" into undefined (accepted) or the
 * receiver's error. An OK for another byte count than `sent`, or without the expected proof, is a
 * protocol error (EIO).
 */
export function verdictError(line: string, sent: number, proof: string): MigrationError | undefined {
  const ok = /^OK(?: (\d+))?(?: ([0-9a-f]{64}))?$/.exec(line);
  if (ok) {
    if (ok[1] === undefined || Number(ok[1]) !== sent) {
      const said = ok[1] === undefined ? "without a byte count" : `for ${ok[1]} stream bytes`;
      return new MigrationError("EIO", `protocol error: the receiver answered OK ${said}, but ${sent} were sent`);
    }
    if (ok[2] === undefined) {
      return new MigrationError(
        "EPROTONOSUPPORT",
        "the receiver answered OK without proof that it read the stream (a migstream receiver older than the verdict nonce, or not a receiver): upgrade it",
      );
    }
    if (ok[2] !== proof)
      return new MigrationError("EIO", "protocol error: the receiver's OK does not prove it read the stream (wrong proof for the nonce sent after it)");
    return undefined;
  }
  const match = /^ERR (\S+) ?(.*)$/.exec(line);
  if (!match) return new MigrationError("EIO", `unexpected reply from the receiver: ${JSON.stringify(line.slice(0, 200))}`);
  const message = match[2] ?? "";
  // A receiver older than the trailer takes it for stream bytes after the END record.
  if (match[1] === "EBADMSG" && /trailing bytes/.test(message)) {
    return new MigrationError(
      "EPROTONOSUPPORT",
      `the receiver does not take the verdict nonce after the stream (an older migstream): upgrade it (it said: ${message})`,
    );
  }
  const code = CODES.has(match[1]!) ? (match[1] as MigrationErrorCode) : "EIO";
  return new MigrationError(code, `receiver refused the migration: ${message}`);
}

/** The receiver's acceptance: the stream bytes it took and the proof that it read them all. */
export function okLine(bytes: number, proof: string): string {
  return `OK ${bytes} ${proof}\n`;
}

/** The receiver's refusal; newlines in messages would break the framing. */
export function errLine(error: MigrationError): string {
  return `ERR ${error.code} ${error.message.replace(/[\r\n]+/g, " ").slice(0, MAX_VERDICT - 64)}\n`;
}

export function ioError(message: string, cause?: unknown): MigrationError {
  const detail = cause instanceof Error ? `: ${cause.message}` : "";
  return new MigrationError("EIO", `${message}${detail}`, cause === undefined ? {} : { cause });
}
