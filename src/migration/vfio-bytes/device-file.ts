// openVfioDevice(): a MigrationDevice behind the kernel's calling convention, for code that
// speaks the VFIO uAPI in bytes (a VMM shim, a vfio-user server, a test harness): ioctl numbers
// with little-endian structs filled in place, and data fds with read(2) / write(2) / close(2)
// semantics. Errors are MigrationErrors whose code is the errno the kernel would return.
import { MigrationError } from "../../core/errors.js";
import { ResumingSession } from "../resuming-session.js";
import { SavingSession } from "../saving-session.js";
import type { MigrationDevice, Session } from "../v2/migration-device.js";
import {
  VFIO_DEVICE_FEATURE,
  VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
  VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
  VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP,
  VFIO_DEVICE_FEATURE_GET,
  VFIO_DEVICE_FEATURE_MASK,
  VFIO_DEVICE_FEATURE_MIG_DATA_SIZE,
  VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
  VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2,
  VFIO_DEVICE_FEATURE_MIGRATION,
  VFIO_DEVICE_FEATURE_PROBE,
  VFIO_DEVICE_FEATURE_SET,
  VFIO_DEVICE_RESET,
  VFIO_MIG_GET_PRECOPY_INFO,
} from "../uapi.js";
import {
  type FeatureContext,
  featureDmaLoggingReport,
  featureDmaLoggingStart,
  featureDmaLoggingStop,
  featureMigDataSize,
  featureMigDeviceState,
  featureMigration,
  featurePrecopyInfoV2,
} from "./features.js";
import { ArgView, FEATURE_HEADER_BYTES, PRECOPY_INFO_BYTES } from "./structs.js";

export interface VfioDeviceOptions {
  /** Number of the first data fd handed out; later ones count up and are never reused. Default 3. */
  firstFd?: number;
  /** Most bytes one write() accepts (the rest is a short write). Default: all of them. */
  maxWrite?: number;
  /** Offer the DMA logging features (6, 7, 8). Default true; false answers them ENOTTY. */
  dmaLogging?: boolean;
}

/** The kernel's calling convention over a MigrationDevice. */
export interface VfioDeviceFile {
  /**
   * An ioctl on the device (no `fd`) or on a data fd. `arg` holds the little-endian struct and
   * is filled in place; resolves to the ioctl's return value (0), rejects with a MigrationError
   * whose code is the errno name.
   */
  ioctl(request: number, arg: Uint8Array, fd?: number): Promise<number>;
  /** read(2) on a saving data fd: empty at the end of STOP_COPY; ENOMSG in PRE_COPY when nothing is ready. */
  read(fd: number, length: number): Promise<Uint8Array>;
  /** write(2) on a resuming data fd: the bytes accepted, which may be fewer than given. */
  write(fd: number, bytes: Uint8Array): Promise<number>;
  /** close(2) on a data fd. Closing never ends the session: the next state change does. */
  close(fd: number): Promise<void>;
}

interface DataFd {
  readonly session: Session;
}

const DEVICE_FEATURES = new Map<number, (ctx: FeatureContext) => number | Promise<number>>([
  [VFIO_DEVICE_FEATURE_MIGRATION, featureMigration],
  [VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, featureMigDeviceState],
  [VFIO_DEVICE_FEATURE_MIG_DATA_SIZE, featureMigDataSize],
  [VFIO_DEVICE_FEATURE_DMA_LOGGING_START, featureDmaLoggingStart],
  [VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP, featureDmaLoggingStop],
  [VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT, featureDmaLoggingReport],
  [VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2, featurePrecopyInfoV2],
]);

const DMA_LOGGING_FEATURES = new Set([VFIO_DEVICE_FEATURE_DMA_LOGGING_START, VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP, VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT]);

class DeviceFile implements VfioDeviceFile {
  readonly #device: MigrationDevice;
  readonly #fds = new Map<number, DataFd>();
  readonly #maxWrite: number;
  readonly #dmaLogging: boolean;
  #nextFd: number;

  constructor(device: MigrationDevice, options: VfioDeviceOptions) {
    const firstFd = options.firstFd ?? 3;
    if (!Number.isSafeInteger(firstFd) || firstFd < 0 || firstFd > 0x7fffffff)
      throw new MigrationError("EINVAL", `firstFd must be a non-negative s32, got ${String(firstFd)}`);
    const maxWrite = options.maxWrite ?? Number.MAX_SAFE_INTEGER;
    if (!Number.isSafeInteger(maxWrite) || maxWrite < 1) throw new MigrationError("EINVAL", `maxWrite must be a positive integer, got ${String(maxWrite)}`);
    this.#device = device;
    this.#nextFd = firstFd;
    this.#maxWrite = maxWrite;
    this.#dmaLogging = options.dmaLogging ?? true;
  }

  async ioctl(request: number, arg: Uint8Array, fd?: number): Promise<number> {
    if (fd !== undefined) return this.#dataFdIoctl(request, new ArgView(arg), fd);
    if (request === VFIO_DEVICE_FEATURE) return this.#feature(new ArgView(arg));
    if (request === VFIO_DEVICE_RESET) {
      this.#device.reset();
      return 0;
    }
    throw new MigrationError("ENOTTY", `ioctl 0x${(request >>> 0).toString(16)} is not a VFIO device ioctl this device answers`);
  }

  async read(fd: number, length: number): Promise<Uint8Array> {
    const session = this.#live(fd);
    if (!(session instanceof SavingSession)) throw new MigrationError("EBADF", `fd ${fd} is a resuming data fd (write only)`);
    if (!Number.isSafeInteger(length) || length < 0) throw new MigrationError("EINVAL", `invalid read length ${String(length)}`);
    if (length === 0) return new Uint8Array(0);
    return session.read(length) ?? new Uint8Array(0);
  }

  async write(fd: number, bytes: Uint8Array): Promise<number> {
    const session = this.#live(fd);
    if (!(session instanceof ResumingSession)) throw new MigrationError("EBADF", `fd ${fd} is a saving data fd (read only)`);
    if (!(bytes instanceof Uint8Array)) throw new MigrationError("EFAULT", "write needs a Uint8Array");
    if (bytes.length === 0) return 0;
    return session.write(bytes.length > this.#maxWrite ? bytes.subarray(0, this.#maxWrite) : bytes);
  }

  async close(fd: number): Promise<void> {
    if (!this.#fds.delete(fd)) throw new MigrationError("EBADF", `fd ${String(fd)} is not an open data fd`);
  }

  /** The session behind an open fd: EBADF when not open, ENODEV once its session ended (mlx5, hisi). */
  #live(fd: number): Session {
    const entry = this.#fds.get(fd);
    if (!entry) throw new MigrationError("EBADF", `fd ${String(fd)} is not an open data fd`);
    if (entry.session.closed || this.#device.session !== entry.session) {
      throw new MigrationError("ENODEV", `fd ${fd}: its migration session has ended`, { state: this.#device.state });
    }
    return entry.session;
  }

  #openFd(session: Session): number {
    if (this.#nextFd > 0x7fffffff) throw new MigrationError("ENOMEM", "no data fd numbers left (fds are s32 and never reused)");
    const fd = this.#nextFd++;
    this.#fds.set(fd, { session });
    return fd;
  }

  /** VFIO_DEVICE_FEATURE: the header checks of vfio_ioctl_device_feature(), then the feature. */
  async #feature(arg: ArgView): Promise<number> {
    const argsz = arg.u32(0);
    const flags = arg.u32(4);
    if (argsz < FEATURE_HEADER_BYTES) throw new MigrationError("EINVAL", `VFIO_DEVICE_FEATURE argsz ${argsz} is below ${FEATURE_HEADER_BYTES}`);
    const known = VFIO_DEVICE_FEATURE_MASK | VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_PROBE;
    if ((flags & ~known) !== 0) throw new MigrationError("EINVAL", `VFIO_DEVICE_FEATURE flags 0x${flags.toString(16)} has unknown bits`);
    if ((flags & VFIO_DEVICE_FEATURE_PROBE) === 0 && (flags & VFIO_DEVICE_FEATURE_GET) !== 0 && (flags & VFIO_DEVICE_FEATURE_SET) !== 0) {
      throw new MigrationError("EINVAL", "GET and SET together need PROBE");
    }
    const feature = flags & VFIO_DEVICE_FEATURE_MASK;
    const handler = DEVICE_FEATURES.get(feature);
    const offered =
      handler !== undefined &&
      (this.#dmaLogging || !DMA_LOGGING_FEATURES.has(feature)) &&
      (feature !== VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2 || this.#device.features.precopy);
    if (!offered) throw new MigrationError("ENOTTY", `device feature ${feature} is not supported by this device`);
    return handler({ device: this.#device, arg, dataSize: argsz - FEATURE_HEADER_BYTES, flags, openFd: (s) => this.#openFd(s) });
  }

  /**
   * An ioctl on a data fd: only VFIO_MIG_GET_PRECOPY_INFO on a saving fd (ENOTTY otherwise, as
   * mlx5's fops). argsz below the struct is EINVAL; outside the PRE_COPY states EINVAL. Without
   * PRECOPY_INFOv2 the flags word is left as the caller gave it (the kernel's echo); with it,
   * it carries VFIO_PRECOPY_INFO_REINIT.
   */
  #dataFdIoctl(request: number, arg: ArgView, fd: number): number {
    const entry = this.#fds.get(fd);
    if (!entry) throw new MigrationError("EBADF", `fd ${String(fd)} is not an open data fd`);
    if (request !== VFIO_MIG_GET_PRECOPY_INFO || !(entry.session instanceof SavingSession)) {
      throw new MigrationError("ENOTTY", `ioctl 0x${(request >>> 0).toString(16)} is not supported on data fd ${fd}`);
    }
    arg.need(0, PRECOPY_INFO_BYTES);
    const argsz = arg.u32(0);
    if (argsz < PRECOPY_INFO_BYTES) throw new MigrationError("EINVAL", `VFIO_MIG_GET_PRECOPY_INFO argsz ${argsz} is below ${PRECOPY_INFO_BYTES}`);
    this.#live(fd);
    const device = this.#device;
    if (device.precopyInfoV2Enabled) {
      const info = device.precopyInfoV2();
      arg.setU32(4, info.flags);
      arg.setU64(8, info.initialBytes);
      arg.setU64(16, info.dirtyBytes);
    } else {
      const info = device.precopyInfo();
      arg.setU64(8, info.initialBytes);
      arg.setU64(16, info.dirtyBytes);
    }
    return 0;
  }
}

/** Opens `device` the way a VMM opens a VFIO device fd: see VfioDeviceFile. */
export function openVfioDevice(device: MigrationDevice, options: VfioDeviceOptions = {}): VfioDeviceFile {
  return new DeviceFile(device, options);
}
