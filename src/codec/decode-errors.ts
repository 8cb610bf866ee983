// Statuses of the decode kernel (assembly/decode.ts) as typed errors.
import { MigrationError, type MigrationErrorCode } from "../core/errors.js";

const KERNEL_ERRORS: Record<number, [MigrationErrorCode, string]> = {
  [-1]: ["EBADMSG", "unknown mandatory record tag"],
  [-2]: ["EBADMSG", "invalid record flags"],
  [-3]: ["EBADMSG", "record out of sequence (missing, duplicated or reordered record)"],
  [-4]: ["EBADMSG", "record names a region the stream does not have"],
  [-5]: ["EBADMSG", "record offset is not page-aligned or lies outside its region"],
  [-6]: ["EBADMSG", "record payload length does not match its kind"],
  [-7]: ["E2BIG", "record payload exceeds the maximum record payload"],
  [-8]: ["EBADMSG", "record checksum mismatch"],
  [-9]: ["EBADMSG", "malformed XBZRLE delta"],
  [-10]: ["EBADMSG", "delta for a page the target does not hold"],
  [-11]: ["EBADMSG", "end-of-stream record count does not match"],
  [-12]: ["EBADMSG", "end-of-stream byte count does not match"],
  [-13]: ["EBADMSG", "end-of-stream digest does not match"],
  [-14]: ["EBADMSG", "second config record"],
  [-15]: ["EBADMSG", "round marker out of order"],
  [-16]: ["EBADMSG", "trailing bytes after the end of the stream"],
  [-17]: ["EBADMSG", "record fields invalid for its kind"],
  [-18]: ["E2BIG", "stream applies more pages than the limit allows (maxPagesApplied)"],
  [-19]: ["EBADMSG", "malformed LZ4 block"],
};

export function kernelError(status: number, recordIndex: number, byteOffset: number, tag?: number): MigrationError {
  const [code, text] = KERNEL_ERRORS[status] ?? (["EBADMSG", `decoder status ${status}`] as const);
  const what = tag === undefined ? "" : ` (tag 0x${tag.toString(16).padStart(2, "0")})`;
  return new MigrationError(code, `${text} at record ${recordIndex}, byte ${byteOffset}${what}`, { recordIndex, byteOffset });
}
