// The receiver's one-line answer: "OK <bytes>\n" once the state is durably where it was asked to
// go, or "ERR <code> <message>\n". Its framing and parsing, shared by both ends. The OK names the
// stream bytes the receiver took: the sender accepts it only when that is all it sent, so a peer
// that answers OK without reading the stream (or before it ended) is caught whatever the
// timing: a tiny stream can leave in one write before an early OK is even seen.
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

/**
 * Parses "OK <bytes>" / "ERR <code> <message>" into undefined (accepted) or the receiver's error.
 * An OK for another byte count than `sent` (or without one) is a protocol error (EIO).
 */
export function verdictError(line: string, sent: number): MigrationError | undefined {
  const ok = /^OK(?: (\d+))?$/.exec(line);
  if (ok) {
    if (ok[1] !== undefined && Number(ok[1]) === sent) return undefined;
    const said = ok[1] === undefined ? "without a byte count" : `for ${ok[1]} stream bytes`;
    return new MigrationError("EIO", `protocol error: the receiver answered OK ${said}, but ${sent} were sent`);
  }
  const match = /^ERR (\S+) ?(.*)$/.exec(line);
  if (!match) return new MigrationError("EIO", `unexpected reply from the receiver: ${JSON.stringify(line.slice(0, 200))}`);
  const code = CODES.has(match[1]!) ? (match[1] as MigrationErrorCode) : "EIO";
  return new MigrationError(code, `receiver refused the migration: ${match[2] ?? ""}`);
}

/** The one line a receiver sends back; newlines in messages would break the framing. */
export function verdictLine(error: MigrationError | undefined, bytes: number): string {
  if (!error) return `OK ${bytes}\n`;
  return `ERR ${error.code} ${error.message.replace(/[\r\n]+/g, " ").slice(0, MAX_VERDICT - 64)}\n`;
}

export function ioError(message: string, cause?: unknown): MigrationError {
  const detail = cause instanceof Error ? `: ${cause.message}` : "";
  return new MigrationError("EIO", `${message}${detail}`, cause === undefined ? {} : { cause });
}
