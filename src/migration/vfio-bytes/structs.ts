// The byte layouts of the VFIO migration structs (include/uapi/linux/vfio.h), little-endian as
// on every host VFIO runs on, and the argument checks the kernel applies to a feature request
// (vfio_check_feature()). Pointers do not exist in bytes: the DMA-logging ranges follow the
// control struct inline and a report's bitmap comes back inline after the report struct, the
// way vfio-user carries them (docs/interop/vfio-user.rst in QEMU).
import { MigrationError } from "../../core/errors.js";
import { VFIO_DEVICE_FEATURE_GET, VFIO_DEVICE_FEATURE_PROBE, VFIO_DEVICE_FEATURE_SET } from "../uapi.js";

/** struct vfio_device_feature: u32 argsz, u32 flags, then the feature's data. */
export const FEATURE_HEADER_BYTES = 8;
/** struct vfio_device_feature_migration: aligned u64 flags. */
export const MIGRATION_BYTES = 8;
/** struct vfio_device_feature_mig_state: u32 device_state, s32 data_fd. */
export const MIG_STATE_BYTES = 8;
/** struct vfio_device_feature_mig_data_size: aligned u64 stop_copy_length. */
export const MIG_DATA_SIZE_BYTES = 8;
/** struct vfio_precopy_info: u32 argsz, u32 flags, aligned u64 initial_bytes, aligned u64 dirty_bytes. */
export const PRECOPY_INFO_BYTES = 24;
/** DMA logging control, inline form: u64 page_size, u32 num_ranges, u32 reserved, then the ranges. */
export const DMA_LOGGING_CONTROL_BYTES = 16;
/** struct vfio_device_feature_dma_logging_range: aligned u64 iova, aligned u64 length. */
export const DMA_LOGGING_RANGE_BYTES = 16;
/** DMA logging report, inline form: u64 iova, u64 length, u64 page_size, then the bitmap (u64 words). */
export const DMA_LOGGING_REPORT_BYTES = 24;

/** A little-endian view of an ioctl argument, with the kernel's EFAULT for bytes outside it. */
export class ArgView {
  readonly bytes: Uint8Array;
  readonly #view: DataView;

  constructor(bytes: Uint8Array) {
    if (!(bytes instanceof Uint8Array)) throw new MigrationError("EFAULT", "an ioctl argument must be a Uint8Array");
    this.bytes = bytes;
    this.#view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  /** EFAULT unless [offset, offset + length) lies inside the argument (copy_from_user would fault). */
  need(offset: number, length: number): void {
    if (offset + length > this.bytes.length) {
      throw new MigrationError("EFAULT", `the ioctl argument has ${this.bytes.length} bytes, ${offset + length} are needed`);
    }
  }

  u32(offset: number): number {
    this.need(offset, 4);
    return this.#view.getUint32(offset, true);
  }

  setU32(offset: number, value: number): void {
    this.need(offset, 4);
    this.#view.setUint32(offset, value >>> 0, true);
  }

  setS32(offset: number, value: number): void {
    this.need(offset, 4);
    this.#view.setInt32(offset, value, true);
  }

  u64(offset: number): bigint {
    this.need(offset, 8);
    return this.#view.getBigUint64(offset, true);
  }

  setU64(offset: number, value: number | bigint): void {
    this.need(offset, 8);
    this.#view.setBigUint64(offset, BigInt(value), true);
  }
}

/**
 * vfio_check_feature(): "probe" when the request only probes (the GET / SET bits it names are
 * supported), "run" when it is a GET or SET to execute with at least `minsz` data bytes. EINVAL
 * for an operation the feature does not allow, neither GET nor SET without PROBE, or an
 * `argsz` too small for the data.
 */
export function checkFeature(flags: number, dataSize: number, supported: number, minsz: number, name: string): "probe" | "run" {
  const ops = flags & (VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET);
  if ((ops & ~supported) !== 0) {
    throw new MigrationError("EINVAL", `${name} does not support ${(ops & ~supported) === VFIO_DEVICE_FEATURE_GET ? "GET" : "SET"}`);
  }
  if ((flags & VFIO_DEVICE_FEATURE_PROBE) !== 0) return "probe";
  if (ops === 0) throw new MigrationError("EINVAL", `${name}: a feature request needs GET, SET or PROBE`);
  if (dataSize < minsz)
    throw new MigrationError("EINVAL", `${name} needs argsz of at least ${FEATURE_HEADER_BYTES + minsz}, got ${FEATURE_HEADER_BYTES + dataSize}`);
  return "run";
}
