// Numbers of the VFIO migration uAPI (include/uapi/linux/vfio.h), for code that talks to a real
// kernel or vfio-user peer beside this library, and the mapping between v2 states and v1
// device_state values in both directions.
import { MigrationError } from "../core/errors.js";
import { classifyDeviceState, DEVICE_STATE_NDMA, DEVICE_STATE_RESUMING, DEVICE_STATE_RUNNING, DEVICE_STATE_SAVING } from "./v1/device-state.js";
import type { MigrationState } from "./v2/states.js";

export { VFIO_MIGRATION_STOP_COPY, VFIO_MIGRATION_P2P, VFIO_MIGRATION_PRE_COPY } from "./v2/states.js";
export { VFIO_PRECOPY_INFO_REINIT } from "./saving-session.js";
export { DMA_LOG_MAX_RANGES as VFIO_DEVICE_DMA_LOGGING_MAX_RANGES } from "../device/dma-logging.js";

/** VFIO_TYPE (';') and VFIO_BASE: every VFIO ioctl number is _IO(VFIO_TYPE, VFIO_BASE + n). */
export const VFIO_TYPE = 0x3b;
export const VFIO_BASE = 100;
/** VFIO_DEVICE_RESET, _IO(VFIO_TYPE, VFIO_BASE + 11): back to RUNNING from any state. */
export const VFIO_DEVICE_RESET = 0x3b6f;
/** VFIO_DEVICE_FEATURE, _IO(VFIO_TYPE, VFIO_BASE + 17): GET / SET / PROBE a device feature. */
export const VFIO_DEVICE_FEATURE = 0x3b75;
/** VFIO_MIG_GET_PRECOPY_INFO, _IO(VFIO_TYPE, VFIO_BASE + 21), on a saving data fd. */
export const VFIO_MIG_GET_PRECOPY_INFO = 0x3b79;

/** struct vfio_device_feature flags: the feature index (low 16 bits) and the operation bits. */
export const VFIO_DEVICE_FEATURE_MASK = 0xffff;
export const VFIO_DEVICE_FEATURE_GET = 1 << 16;
export const VFIO_DEVICE_FEATURE_SET = 1 << 17;
export const VFIO_DEVICE_FEATURE_PROBE = 1 << 18;

/** enum vfio_device_mig_state: the v2 state numbers. */
export const VFIO_DEVICE_STATE_ERROR = 0;
export const VFIO_DEVICE_STATE_STOP = 1;
export const VFIO_DEVICE_STATE_RUNNING = 2;
export const VFIO_DEVICE_STATE_STOP_COPY = 3;
export const VFIO_DEVICE_STATE_RESUMING = 4;
export const VFIO_DEVICE_STATE_RUNNING_P2P = 5;
export const VFIO_DEVICE_STATE_PRE_COPY = 6;
export const VFIO_DEVICE_STATE_PRE_COPY_P2P = 7;
export const VFIO_DEVICE_STATE_NR = 8;

/** VFIO_DEVICE_FEATURE_MIGRATION: GET the VFIO_MIGRATION_* flags. */
export const VFIO_DEVICE_FEATURE_MIGRATION = 1;
/** VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE: GET / SET the v2 state (SET may return a data_fd). */
export const VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE = 2;
/** VFIO_DEVICE_FEATURE_DMA_LOGGING_START. */
export const VFIO_DEVICE_FEATURE_DMA_LOGGING_START = 6;
/** VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP. */
export const VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP = 7;
/** VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT. */
export const VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT = 8;
/** VFIO_DEVICE_FEATURE_MIG_DATA_SIZE: the stop-copy length estimate, any state. */
export const VFIO_DEVICE_FEATURE_MIG_DATA_SIZE = 9;
/** PRECOPY_INFOv2 (2026 uAPI): PRE_COPY info with flags (VFIO_PRECOPY_INFO_REINIT). */
export const VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2 = 12;

/** v1 device_state bits (VFIO_DEVICE_STATE_V1_*), and the NDMA bit of the December 2021 RFC. */
export const VFIO_DEVICE_STATE_V1_STOP = 0;
export const VFIO_DEVICE_STATE_V1_RUNNING = DEVICE_STATE_RUNNING;
export const VFIO_DEVICE_STATE_V1_SAVING = DEVICE_STATE_SAVING;
export const VFIO_DEVICE_STATE_V1_RESUMING = DEVICE_STATE_RESUMING;
export const VFIO_DEVICE_STATE_V1_NDMA = DEVICE_STATE_NDMA;
/** VFIO_DEVICE_STATE_MASK of v1 (RUNNING | SAVING | RESUMING). */
export const VFIO_DEVICE_STATE_V1_MASK = 0x7;

const V2_TO_V1: Readonly<Record<MigrationState, number>> = {
  ERROR: DEVICE_STATE_SAVING | DEVICE_STATE_RESUMING,
  STOP: 0,
  RUNNING: DEVICE_STATE_RUNNING,
  STOP_COPY: DEVICE_STATE_SAVING,
  RESUMING: DEVICE_STATE_RESUMING,
  RUNNING_P2P: DEVICE_STATE_RUNNING | DEVICE_STATE_NDMA,
  PRE_COPY: DEVICE_STATE_RUNNING | DEVICE_STATE_SAVING,
  PRE_COPY_P2P: DEVICE_STATE_RUNNING | DEVICE_STATE_SAVING | DEVICE_STATE_NDMA,
};

/**
 * The v1 device_state value that behaves as v2 `state` (ERROR is the error encoding 6). The P2P
 * states need NDMA; without it (`ndma: false`) they have no v1 value and the call is EINVAL.
 */
export function v2StateToV1(state: MigrationState, options: { ndma: boolean } = { ndma: true }): number {
  if (!Object.hasOwn(V2_TO_V1, state)) throw new MigrationError("EINVAL", `${String(state)} is not a migration state`);
  const value = V2_TO_V1[state];
  if ((value & DEVICE_STATE_NDMA) !== 0 && !options.ndma) {
    throw new MigrationError("EINVAL", `${state} has no v1 device_state without NDMA`, { state });
  }
  return value;
}

/** The v2 state a v1 device_state value behaves as (EINVAL for invalid values). */
export function v1StateToV2(value: number): MigrationState {
  const info = classifyDeviceState(value);
  if (info.v2 === undefined || (!info.valid && !info.isError)) {
    throw new MigrationError("EINVAL", `device_state ${info.name} has no v2 state`);
  }
  return info.v2;
}
