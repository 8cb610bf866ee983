/**
 * The one error type of the library. `code` is stable and errno-like so callers (and the CLI's
 * exit codes) can branch on it; the message is for people and may change.
 *
 * Codes in use:
 * - `EINVAL`  invalid argument, invalid state or transition, malformed XBZRLE delta
 * - `EBADMSG` corrupt stream: bad magic, checksum mismatch, framing, sequence or bounds error
 * - `ENODATA` incomplete stream: truncated, or the end-of-stream record is missing
 * - `EPROTONOSUPPORT` incompatible format version (other major, or a newer minor)
 * - `ENODEV`  incompatible device: the device compatibility id or region table does not match
 * - `ESTALE`  incompatible base: an incremental stream applied onto another base
 * - `E2BIG`   a decoder limit (state size, record payload, header size) was exceeded
 * - `ENOMSG`  no data for now (a PRE_COPY saving session has nothing new to send)
 * - `ETIMEDOUT` a device did not quiesce before its deadline
 * - `EBUSY`   a state change is already in progress on that device
 * - `EIO`     a device callback or an I/O operation failed
 * - `ENOMEM`  WebAssembly memory could not grow
 * - `EFAULT`  the Wasm core trapped (a bug); the instance was replaced
 * - `ECANCELED` the operation was aborted through its AbortSignal
 * - `ENOTTY`  an ioctl request or device feature the device does not have (the uAPI adapter)
 * - `EOVERFLOW` a 64-bit IOVA range whose end passes 2^64 - 1
 * - `EBADF`   a data fd that is not open, or used in the wrong direction (the uAPI adapter)
 */
export type MigrationErrorCode =
  | "EINVAL"
  | "EBADMSG"
  | "ENODATA"
  | "EPROTONOSUPPORT"
  | "ENODEV"
  | "ESTALE"
  | "E2BIG"
  | "ENOMSG"
  | "ETIMEDOUT"
  | "EBUSY"
  | "EIO"
  | "ENOMEM"
  | "EFAULT"
  | "ECANCELED"
  | "ENOTTY"
  | "EOVERFLOW"
  | "EBADF";

/** Where and when an error happened; every field is optional. */
export interface MigrationErrorDetails {
  /** Index of the stream record at fault (0 = first record after the header). */
  recordIndex?: number;
  /** Byte offset in the stream where the faulty element starts. */
  byteOffset?: number;
  /** Device state when the error happened (kernel naming, e.g. "RESUMING"). */
  state?: string;
  /** Source state of a failed transition. */
  from?: string;
  /** Requested target state of a failed transition. */
  to?: string;
  /** The underlying error, if any. */
  cause?: unknown;
}

export class MigrationError extends Error {
  readonly code: MigrationErrorCode;
  readonly recordIndex: number | undefined;
  readonly byteOffset: number | undefined;
  readonly state: string | undefined;
  readonly from: string | undefined;
  readonly to: string | undefined;

  constructor(code: MigrationErrorCode, message: string, details: MigrationErrorDetails = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.code = code;
    this.recordIndex = details.recordIndex;
    this.byteOffset = details.byteOffset;
    this.state = details.state;
    this.from = details.from;
    this.to = details.to;
  }

  override get name(): string {
    return "MigrationError";
  }
}

/** True for errors that mean "the stream is damaged or cut short". */
export function isCorruptionCode(code: MigrationErrorCode): boolean {
  return code === "EBADMSG" || code === "ENODATA" || code === "E2BIG";
}

/** True for errors that mean "the stream is fine but not for this reader, device or base". */
export function isIncompatibilityCode(code: MigrationErrorCode): boolean {
  return code === "EPROTONOSUPPORT" || code === "ENODEV" || code === "ESTALE";
}
