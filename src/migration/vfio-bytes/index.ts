// The VFIO uAPI in bytes: openVfioDevice() and the argument builders / readers.
export { openVfioDevice, type VfioDeviceFile, type VfioDeviceOptions } from "./device-file.js";
export {
  vfioFeatureArg,
  migStateSetArg,
  migStateGetArg,
  readMigState,
  readFeatureU64,
  dmaLoggingStartArg,
  dmaLoggingReportArg,
  reportBitmap,
  precopyInfoArg,
  readPrecopyInfo,
} from "./requests.js";
