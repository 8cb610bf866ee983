// Builders for the ioctl arguments openVfioDevice() takes, and readers for what it fills in:
// the caller's side of the structs in structs.ts (a VMM shim or a vfio-user client would build
// the same bytes).
import { DMA_LOG_MAX_RANGES, type Iova, reportLayout } from "../../device/dma-logging.js";
import { MigrationError } from "../../core/errors.js";
import {
  VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
  VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
  VFIO_DEVICE_FEATURE_GET,
  VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
  VFIO_DEVICE_FEATURE_SET,
} from "../uapi.js";
import {
  DMA_LOGGING_CONTROL_BYTES,
  DMA_LOGGING_RANGE_BYTES,
  DMA_LOGGING_REPORT_BYTES,
  FEATURE_HEADER_BYTES,
  MIG_STATE_BYTES,
  PRECOPY_INFO_BYTES,
} from "./structs.js";

function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** A struct vfio_device_feature with `dataBytes` zeroed data bytes: argsz = 8 + dataBytes. */
export function vfioFeatureArg(flags: number, dataBytes = 0): Uint8Array {
  const arg = new Uint8Array(FEATURE_HEADER_BYTES + dataBytes);
  view(arg).setUint32(0, arg.length, true);
  view(arg).setUint32(4, flags >>> 0, true);
  return arg;
}

/** MIG_DEVICE_STATE SET of state number `state` (VFIO_DEVICE_STATE_*); data_fd starts at -1. */
export function migStateSetArg(state: number): Uint8Array {
  const arg = vfioFeatureArg(VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, MIG_STATE_BYTES);
  view(arg).setUint32(FEATURE_HEADER_BYTES, state >>> 0, true);
  view(arg).setInt32(FEATURE_HEADER_BYTES + 4, -1, true);
  return arg;
}

/** MIG_DEVICE_STATE GET. */
export function migStateGetArg(): Uint8Array {
  return vfioFeatureArg(VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, MIG_STATE_BYTES);
}

/** device_state and data_fd of a MIG_DEVICE_STATE argument after the ioctl. */
export function readMigState(arg: Uint8Array): { deviceState: number; dataFd: number } {
  return { deviceState: view(arg).getUint32(FEATURE_HEADER_BYTES, true), dataFd: view(arg).getInt32(FEATURE_HEADER_BYTES + 4, true) };
}

/** The u64 at data offset `offset` of a feature argument (MIGRATION flags, MIG_DATA_SIZE, page_size). */
export function readFeatureU64(arg: Uint8Array, offset = 0): bigint {
  return view(arg).getBigUint64(FEATURE_HEADER_BYTES + offset, true);
}

/** DMA_LOGGING_START SET: control struct with the ranges inline. */
export function dmaLoggingStartArg(pageSize: number | bigint, ranges: readonly { iova: Iova; length: Iova }[]): Uint8Array {
  if (ranges.length > DMA_LOG_MAX_RANGES) throw new MigrationError("E2BIG", `at most ${DMA_LOG_MAX_RANGES} ranges`);
  const arg = vfioFeatureArg(
    VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
    DMA_LOGGING_CONTROL_BYTES + ranges.length * DMA_LOGGING_RANGE_BYTES,
  );
  const v = view(arg);
  v.setBigUint64(FEATURE_HEADER_BYTES, BigInt(pageSize), true);
  v.setUint32(FEATURE_HEADER_BYTES + 8, ranges.length, true);
  ranges.forEach((r, i) => {
    const at = FEATURE_HEADER_BYTES + DMA_LOGGING_CONTROL_BYTES + i * DMA_LOGGING_RANGE_BYTES;
    v.setBigUint64(at, BigInt(r.iova), true);
    v.setBigUint64(at + 8, BigInt(r.length), true);
  });
  return arg;
}

/** DMA_LOGGING_REPORT GET: report struct plus a zeroed inline bitmap of the size the report needs. */
export function dmaLoggingReportArg(iova: Iova, length: Iova, pageSize: number | bigint): Uint8Array {
  const { bitmapBytes } = reportLayout({ iova, length, pageSize });
  if (bitmapBytes > BigInt(0xffffffff - FEATURE_HEADER_BYTES - DMA_LOGGING_REPORT_BYTES))
    throw new MigrationError("E2BIG", "the report bitmap does not fit an argsz");
  const arg = vfioFeatureArg(VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT, DMA_LOGGING_REPORT_BYTES + Number(bitmapBytes));
  const v = view(arg);
  v.setBigUint64(FEATURE_HEADER_BYTES, BigInt(iova), true);
  v.setBigUint64(FEATURE_HEADER_BYTES + 8, BigInt(length), true);
  v.setBigUint64(FEATURE_HEADER_BYTES + 16, BigInt(pageSize), true);
  return arg;
}

/** The inline bitmap of a DMA_LOGGING_REPORT argument after the ioctl. */
export function reportBitmap(arg: Uint8Array): Uint8Array {
  return arg.subarray(FEATURE_HEADER_BYTES + DMA_LOGGING_REPORT_BYTES);
}

/** struct vfio_precopy_info with argsz set, for VFIO_MIG_GET_PRECOPY_INFO on a data fd. */
export function precopyInfoArg(): Uint8Array {
  const arg = new Uint8Array(PRECOPY_INFO_BYTES);
  view(arg).setUint32(0, PRECOPY_INFO_BYTES, true);
  return arg;
}

/** flags, initial_bytes and dirty_bytes of a vfio_precopy_info after the ioctl. */
export function readPrecopyInfo(arg: Uint8Array): { flags: number; initialBytes: bigint; dirtyBytes: bigint } {
  const v = view(arg);
  return { flags: v.getUint32(4, true), initialBytes: v.getBigUint64(8, true), dirtyBytes: v.getBigUint64(16, true) };
}
