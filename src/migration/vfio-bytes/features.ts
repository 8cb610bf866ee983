// One function per VFIO device feature, each taking the feature's flags and the bytes after
// the struct vfio_device_feature header, and doing what the kernel's handler in vfio_main.c
// (or the driver, for the migration-only features) does: the same checks in the same order,
// the same errno, the struct filled in place.
import { MigrationError } from "../../core/errors.js";
import { DMA_LOG_MAX_RANGES, reportLayout } from "../../device/dma-logging.js";
import type { Session } from "../v2/migration-device.js";
import type { MigrationDevice } from "../v2/migration-device.js";
import { migrationFlags, stateFromNumber, stateToNumber } from "../v2/states.js";
import { VFIO_DEVICE_FEATURE_GET, VFIO_DEVICE_FEATURE_SET } from "../uapi.js";
import {
  type ArgView,
  checkFeature,
  DMA_LOGGING_CONTROL_BYTES,
  DMA_LOGGING_RANGE_BYTES,
  DMA_LOGGING_REPORT_BYTES,
  FEATURE_HEADER_BYTES,
  MIG_DATA_SIZE_BYTES,
  MIG_STATE_BYTES,
  MIGRATION_BYTES,
} from "./structs.js";

/** What a feature handler works on: the device, the argument, and the fd table. */
export interface FeatureContext {
  readonly device: MigrationDevice;
  /** The whole ioctl argument; the feature's data starts at FEATURE_HEADER_BYTES. */
  readonly arg: ArgView;
  /** argsz - 8: the data bytes the caller says it has room for. */
  readonly dataSize: number;
  readonly flags: number;
  /** Installs a data fd for a session a SET opened and returns its number. */
  openFd(session: Session): number;
}

const DATA = FEATURE_HEADER_BYTES;

/** VFIO_DEVICE_FEATURE_MIGRATION (GET, PROBE): the VFIO_MIGRATION_* flags. */
export function featureMigration(ctx: FeatureContext): number {
  if (checkFeature(ctx.flags, ctx.dataSize, VFIO_DEVICE_FEATURE_GET, MIGRATION_BYTES, "MIGRATION") === "probe") return 0;
  ctx.arg.setU64(DATA, migrationFlags(ctx.device.features));
  return 0;
}

/**
 * VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE (GET, SET, PROBE). GET: the current state, data_fd -1.
 * SET: the state change; data_fd is the new data fd when the change opened a session, else -1
 * (written on failure too, as the kernel does, with device_state left as requested).
 */
export async function featureMigDeviceState(ctx: FeatureContext): Promise<number> {
  const { arg, device } = ctx;
  if (checkFeature(ctx.flags, ctx.dataSize, VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET, MIG_STATE_BYTES, "MIG_DEVICE_STATE") === "probe") {
    return 0;
  }
  arg.need(DATA, MIG_STATE_BYTES);
  if ((ctx.flags & VFIO_DEVICE_FEATURE_GET) !== 0) {
    arg.setU32(DATA, stateToNumber(device.state));
    arg.setS32(DATA + 4, -1);
    return 0;
  }
  const requested = arg.u32(DATA);
  let session: Session | undefined;
  try {
    session = await device.setState(stateFromNumber(requested));
  } catch (error) {
    arg.setS32(DATA + 4, -1);
    throw error;
  }
  arg.setS32(DATA + 4, session ? ctx.openFd(session) : -1);
  return 0;
}

/** VFIO_DEVICE_FEATURE_MIG_DATA_SIZE (GET, PROBE): the stop-copy length estimate, any state. */
export function featureMigDataSize(ctx: FeatureContext): number {
  if (checkFeature(ctx.flags, ctx.dataSize, VFIO_DEVICE_FEATURE_GET, MIG_DATA_SIZE_BYTES, "MIG_DATA_SIZE") === "probe") return 0;
  ctx.arg.setU64(DATA, ctx.device.stopCopySize());
  return 0;
}

/**
 * VFIO_DEVICE_FEATURE_DMA_LOGGING_START (SET, PROBE): control struct, ranges inline after it.
 * num_ranges 0 is EINVAL and above 256 E2BIG (before the ranges are read, as the kernel);
 * argsz must cover every range. The page size used is written back into page_size.
 */
export function featureDmaLoggingStart(ctx: FeatureContext): number {
  const { arg } = ctx;
  if (checkFeature(ctx.flags, ctx.dataSize, VFIO_DEVICE_FEATURE_SET, DMA_LOGGING_CONTROL_BYTES, "DMA_LOGGING_START") === "probe") return 0;
  const pageSize = arg.u64(DATA);
  const count = arg.u32(DATA + 8);
  if (count === 0) throw new MigrationError("EINVAL", "DMA_LOGGING_START needs num_ranges > 0");
  // The range count is checked against the limit before its bytes are looked at.
  if (count > DMA_LOG_MAX_RANGES) throw new MigrationError("E2BIG", `${count} DMA logging ranges exceed the maximum of ${DMA_LOG_MAX_RANGES}`);
  const bytes = DMA_LOGGING_CONTROL_BYTES + count * DMA_LOGGING_RANGE_BYTES;
  if (ctx.dataSize < bytes) {
    throw new MigrationError("EINVAL", `DMA_LOGGING_START with ${count} ranges needs argsz of at least ${FEATURE_HEADER_BYTES + bytes}`);
  }
  const ranges = [];
  for (let i = 0; i < count; i++) {
    const at = DATA + DMA_LOGGING_CONTROL_BYTES + i * DMA_LOGGING_RANGE_BYTES;
    ranges.push({ iova: arg.u64(at), length: arg.u64(at + 8) });
  }
  const used = ctx.device.startDmaLogging({ ranges, pageSize: pageSize <= 1n << 30n ? Number(pageSize) : Number.NaN });
  arg.setU64(DATA, used.pageSize);
  return 0;
}

/** VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP (SET, PROBE): no data; a no-op when logging is off. */
export function featureDmaLoggingStop(ctx: FeatureContext): number {
  if (checkFeature(ctx.flags, ctx.dataSize, VFIO_DEVICE_FEATURE_SET, 0, "DMA_LOGGING_STOP") === "probe") return 0;
  ctx.device.stopDmaLogging();
  return 0;
}

/**
 * VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT (GET, PROBE): report struct, bitmap inline after it
 * (u64 words; bits are only ever set, as the kernel never clears the caller's bitmap). The page
 * size and the range end are checked first (EINVAL, EOVERFLOW), then argsz must cover the bitmap.
 */
export function featureDmaLoggingReport(ctx: FeatureContext): number {
  const { arg } = ctx;
  if (checkFeature(ctx.flags, ctx.dataSize, VFIO_DEVICE_FEATURE_GET, DMA_LOGGING_REPORT_BYTES, "DMA_LOGGING_REPORT") === "probe") return 0;
  const request = { iova: arg.u64(DATA), length: arg.u64(DATA + 8), pageSize: arg.u64(DATA + 16) };
  const { bitmapBytes } = reportLayout(request);
  if (BigInt(ctx.dataSize) < BigInt(DMA_LOGGING_REPORT_BYTES) + bitmapBytes) {
    throw new MigrationError(
      "EINVAL",
      `DMA_LOGGING_REPORT needs argsz of at least ${BigInt(FEATURE_HEADER_BYTES + DMA_LOGGING_REPORT_BYTES) + bitmapBytes} for its bitmap`,
    );
  }
  const at = DATA + DMA_LOGGING_REPORT_BYTES;
  arg.need(at, Number(bitmapBytes));
  ctx.device.reportDmaLogging({ ...request, bitmap: arg.bytes.subarray(at, at + Number(bitmapBytes)) });
  return 0;
}

/**
 * VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2 (SET, PROBE): no data; from now on
 * VFIO_MIG_GET_PRECOPY_INFO fills its flags (VFIO_PRECOPY_INFO_REINIT).
 */
export function featurePrecopyInfoV2(ctx: FeatureContext): number {
  if (checkFeature(ctx.flags, ctx.dataSize, VFIO_DEVICE_FEATURE_SET, 0, "MIG_PRECOPY_INFOv2") === "probe") return 0;
  ctx.device.enablePrecopyInfoV2();
  return 0;
}
