// migstream: the public library entry. No `node:` imports below this file, so it runs the same
// in Node, workers and browsers; Node adapters (files, streams, TCP) live in `migstream/node`.

// Errors
export { MigrationError, type MigrationErrorCode, type MigrationErrorDetails } from "./core/errors.js";

// Core kernels (Wasm, with pure-TS references behind them)
export { CoreBuffer, allocate } from "./core/buffer.js";
export { xxh3, createXxh3, type Xxh3Hasher } from "./core/xxh3.js";
export { crc32c } from "./core/crc32c.js";
export { xbzrleEncode, xbzrleDecode } from "./core/xbzrle.js";
export { lz4CompressBlock, lz4DecompressBlock } from "./core/lz4.js";
export { scanDirty, scanZero, scanHash, isPageSet, type ScanResult, type ScanOptions, type ScanDirtyOptions } from "./core/scan.js";

// Wire format and codec
export type { RegionSpec, StreamHeader } from "./format/header.js";
export type { ChecksumAlgorithm, Compression } from "./format/constants.js";
export {
  encodeSnapshot,
  encodeSnapshotWithSummary,
  decodeSnapshot,
  createDecoder,
  StateDecoder,
  type SnapshotEncodeOptions,
} from "./codec/snapshot.js";
export {
  createEncoder,
  StreamEncoder,
  type EncoderOptions,
  type EncoderSummary,
  type PageWriteOptions,
  type RoundStats,
} from "./codec/encoder.js";
export {
  StreamDecoder,
  type DecoderOptions,
  type DecoderLimits,
  type DecoderSummary,
  type DecodeTarget,
  type StagingRegion,
  type TargetPlan,
  type DataRecord,
  type RoundInfo,
} from "./codec/decoder.js";
export { reserveStaging } from "./codec/staging-pool.js";
// The worker pool (issue 20): more threads for the codec, the same bytes
export { encodeSnapshotAsync, decodeSnapshotAsync, type JobsOption } from "./codec/parallel-snapshot.js";
export { WorkerPool, createPool, poolUnavailable, defaultJobs, MAX_JOBS } from "./core/pool/pool.js";
export { scanHashOnPool } from "./core/pool/scan.js";

// Device model and migration state machines
export { DeviceModel, type DirtyTracking, type DeviceModelOptions, type DeviceRegionSpec, type MemoryRegionSpec } from "./device/device-model.js";
export {
  DmaLogging,
  DMA_LOG_MAX_RANGES,
  type Iova,
  type DmaRange,
  type DmaLoggingStart,
  type DmaLoggingReport,
  type DmaLoggingOptions,
} from "./device/dma-logging.js";
export {
  nextState,
  migrationPath,
  arcEffect,
  stateSupported,
  stateFromNumber,
  stateToNumber,
  isMigrationState,
  migrationFlags,
  MIGRATION_STATES,
  MIGRATION_STATE_NUMBERS,
  type MigrationState,
  type MigrationFeatures,
} from "./migration/v2/states.js";
export { MigrationDevice, type MigrationDeviceOptions, type DeviceCallbacks, type Session } from "./migration/v2/migration-device.js";
export { SavingSession, type PrecopyInfo, type PrecopyInfoV2 } from "./migration/saving-session.js";
export * from "./migration/uapi.js";
export * from "./migration/vfio-bytes/index.js";
export { ResumingSession } from "./migration/resuming-session.js";
export { DeviceGroup, type DeviceGroupOptions } from "./migration/group.js";
export { migrateOut, migrateIn, type PrecopyOptions, type PrecopyRoundReport, type MigrationReport } from "./migration/precopy.js";
export {
  classifyDeviceState,
  deviceStateName,
  validateDeviceStateWrite,
  DEVICE_STATE_RUNNING,
  DEVICE_STATE_SAVING,
  DEVICE_STATE_RESUMING,
  DEVICE_STATE_NDMA,
} from "./migration/v1/device-state.js";
export {
  MigrationRegion,
  type MigrationRegionOptions,
  REG_DEVICE_STATE,
  REG_PENDING_BYTES,
  REG_DATA_OFFSET,
  REG_DATA_SIZE,
  DATA_WINDOW_OFFSET,
} from "./migration/v1/migration-region.js";

// QEMU's migration stream (docs/QEMU.md): a push reader and a writer QEMU 7.2 loads.
export {
  QemuStreamReader,
  isQemuStream,
  QEMU_READER_DEFAULTS,
  type QemuReaderOptions,
  type QemuStreamSummary,
  type QemuSectionInfo,
  type QemuDeviceState,
} from "./qemu/reader.js";
export { QemuStreamWriter, type QemuWriterSummary } from "./qemu/writer.js";
export type { RamBlock as QemuRamBlock, RamMode as QemuRamMode, RamSpill as QemuRamSpill } from "./qemu/ram-kernel.js";
