// The vfio-user wire protocol (qemu docs/interop/vfio-user.rst): message numbers, the 16-byte
// header every message starts with, and errno numbers for error replies. All integers are in
// the host's byte order (little-endian on every host Node runs on that this was tested on).
import { constants } from "node:os";
import { MigrationError } from "../../core/errors.js";

/** Command numbers (the spec's table; 14 was libvfio-user's pre-v2 DIRTY_PAGES). */
export const VFIO_USER_VERSION = 1;
export const VFIO_USER_DMA_MAP = 2;
export const VFIO_USER_DMA_UNMAP = 3;
export const VFIO_USER_DEVICE_GET_INFO = 4;
export const VFIO_USER_DEVICE_GET_REGION_INFO = 5;
export const VFIO_USER_DEVICE_GET_REGION_IO_FDS = 6;
export const VFIO_USER_DEVICE_GET_IRQ_INFO = 7;
export const VFIO_USER_DEVICE_SET_IRQS = 8;
export const VFIO_USER_REGION_READ = 9;
export const VFIO_USER_REGION_WRITE = 10;
export const VFIO_USER_DMA_READ = 11;
export const VFIO_USER_DMA_WRITE = 12;
export const VFIO_USER_DEVICE_RESET = 13;
export const VFIO_USER_REGION_WRITE_MULTI = 15;
export const VFIO_USER_DEVICE_FEATURE = 16;
export const VFIO_USER_MIG_DATA_READ = 17;
export const VFIO_USER_MIG_DATA_WRITE = 18;

/** Protocol version this server speaks (libvfio-user's and QEMU's: 0.1). */
export const VFIO_USER_MAJOR = 0;
export const VFIO_USER_MINOR = 1;

export const HEADER_SIZE = 16;
/** Flags word: bits 0-3 the type, bit 4 no_reply, bit 5 error. */
export const FLAG_TYPE_MASK = 0xf;
export const TYPE_COMMAND = 0;
export const TYPE_REPLY = 1;
export const FLAG_NO_REPLY = 0x10;
export const FLAG_ERROR = 0x20;

/** Default `max_data_xfer_size` of the spec: the largest count of one data message. */
export const DEFAULT_MAX_DATA_XFER_SIZE = 1 << 20;

export interface Header {
  msgId: number;
  command: number;
  /** Size of the whole message, header included. */
  size: number;
  flags: number;
  error: number;
}

export function readHeader(bytes: Uint8Array): Header {
  const view = new DataView(bytes.buffer, bytes.byteOffset, HEADER_SIZE);
  return {
    msgId: view.getUint16(0, true),
    command: view.getUint16(2, true),
    size: view.getUint32(4, true),
    flags: view.getUint32(8, true),
    error: view.getUint32(12, true),
  };
}

export function writeHeader(into: Uint8Array, header: Header): void {
  const view = new DataView(into.buffer, into.byteOffset, HEADER_SIZE);
  view.setUint16(0, header.msgId, true);
  view.setUint16(2, header.command, true);
  view.setUint32(4, header.size, true);
  view.setUint32(8, header.flags, true);
  view.setUint32(12, header.error, true);
}

/** A failure to be answered with an error reply carrying `errno` (a name of os.constants.errno). */
export class VfioUserError extends Error {
  readonly errno: string;
  constructor(errno: string, message: string) {
    super(message);
    this.errno = errno;
  }
}

/** The host's errno number for an error: MigrationError codes and VfioUserError names map by name. */
export function errnoOf(error: unknown): number {
  const name = error instanceof VfioUserError ? error.errno : error instanceof MigrationError ? error.code : "EIO";
  return (constants.errno as Record<string, number | undefined>)[name] ?? constants.errno.EIO;
}

/** The errno name of a number (for clients and messages); `E<n>` when the host has no name for it. */
export function errnoName(errno: number): string {
  for (const [name, value] of Object.entries(constants.errno)) if (value === errno) return name;
  return `E${errno}`;
}
