// The migration messages: VFIO_USER_DEVICE_FEATURE goes to the device's byte-level uAPI file
// (the same struct vfio_device_feature bytes an ioctl takes), and MIG_DATA_READ / _WRITE are
// read(2) / write(2) on the data fd the last MIG_DEVICE_STATE SET opened: the server holds that
// fd for the client, since vfio-user carries the data in messages instead. DMA logging's ranges
// and bitmap are inline in both (the adapter's byte form is vfio-user's).
import { MigrationError } from "../../core/errors.js";
import { reportLayout } from "../../device/dma-logging.js";
import type { MigrationDevice } from "../../migration/v2/migration-device.js";
import type { VfioDeviceFile } from "../../migration/vfio-bytes/index.js";
import {
  VFIO_DEVICE_FEATURE,
  VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
  VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
  VFIO_DEVICE_FEATURE_GET,
  VFIO_DEVICE_FEATURE_MASK,
  VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
  VFIO_DEVICE_FEATURE_PROBE,
  VFIO_DEVICE_FEATURE_SET,
  VFIO_DEVICE_RESET,
  VFIO_DEVICE_STATE_PRE_COPY,
  VFIO_DEVICE_STATE_PRE_COPY_P2P,
  VFIO_DEVICE_STATE_RESUMING,
  VFIO_DEVICE_STATE_STOP_COPY,
} from "../../migration/uapi.js";
import { SavingSession } from "../../migration/saving-session.js";
import type { ClientConnection, Reply } from "./connection.js";
import { VfioUserError } from "./protocol.js";

/** enum vfio_device_mig_state values with a data session: STOP_COPY, RESUMING, PRE_COPY, PRE_COPY_P2P. */
const SESSION_STATES = new Set([VFIO_DEVICE_STATE_STOP_COPY, VFIO_DEVICE_STATE_RESUMING, VFIO_DEVICE_STATE_PRE_COPY, VFIO_DEVICE_STATE_PRE_COPY_P2P]);

/** Bytes after the 8-byte feature header that a GET of feature `index` filled in `arg`. */
function getDataBytes(index: number, arg: Uint8Array): number {
  if (index === VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT && arg.length >= 32) {
    // The report struct, then the bitmap the device filled (the ioctl succeeded: its layout is valid).
    const view = new DataView(arg.buffer, arg.byteOffset, arg.length);
    const { bitmapBytes } = reportLayout({ iova: view.getBigUint64(8, true), length: view.getBigUint64(16, true), pageSize: view.getBigUint64(24, true) });
    return 24 + Number(bitmapBytes);
  }
  // MIGRATION (flags), MIG_DEVICE_STATE (state, fd), MIG_DATA_SIZE (length): 8 bytes each.
  return 8;
}

/**
 * DMA_LOGGING_START with no ranges: vfio-user's "log every write", which the kernel's struct
 * cannot say (num_ranges 0 is EINVAL there): the ranges become the client's DMA windows.
 */
function withWindows(payload: Uint8Array, connection: ClientConnection): Uint8Array {
  const windows = connection.dma.windows;
  const out = new Uint8Array(24 + 16 * windows.length);
  out.set(payload.subarray(0, 24));
  const view = new DataView(out.buffer);
  view.setUint32(16, windows.length, true);
  windows.forEach((w, i) => {
    view.setBigUint64(24 + 16 * i, BigInt(w.address), true);
    view.setBigUint64(32 + 16 * i, BigInt(w.size), true);
  });
  return out;
}

export interface MigrationMessagesOptions {
  /** The largest count of one MIG_DATA_READ / _WRITE, and of a feature's argument. */
  maxDataXferSize: number;
}

export class MigrationMessages {
  readonly #device: MigrationDevice;
  readonly #file: VfioDeviceFile;
  readonly #max: number;
  /** The data fd of the current session and its direction. */
  #fd: number | undefined;
  #direction: "saving" | "resuming" | undefined;

  constructor(device: MigrationDevice, file: VfioDeviceFile, options: MigrationMessagesOptions) {
    this.#device = device;
    this.#file = file;
    this.#max = options.maxDataXferSize;
  }

  /** VFIO_USER_DEVICE_FEATURE: { argsz, flags, data }, the bytes of struct vfio_device_feature. */
  async feature(payload: Uint8Array, connection: ClientConnection): Promise<Uint8Array[]> {
    if (payload.length < 8) throw new VfioUserError("EINVAL", `DEVICE_FEATURE needs 8 bytes, got ${payload.length}`);
    const view = new DataView(payload.buffer, payload.byteOffset, payload.length);
    const argsz = view.getUint32(0, true);
    const flags = view.getUint32(4, true);
    const index = flags & VFIO_DEVICE_FEATURE_MASK;
    const run = (flags & VFIO_DEVICE_FEATURE_PROBE) === 0;
    // argsz is what the client accepts back; the argument is never larger than a message.
    if (argsz > this.#max + 4096) throw new VfioUserError("EINVAL", `DEVICE_FEATURE argsz ${argsz} is over ${this.#max + 4096}`);
    const request =
      index === VFIO_DEVICE_FEATURE_DMA_LOGGING_START && run && payload.length >= 24 && view.getUint32(16, true) === 0
        ? withWindows(payload, connection)
        : payload;
    const arg = new Uint8Array(Math.max(request.length, argsz));
    arg.set(request);
    const argView = new DataView(arg.buffer);
    argView.setUint32(0, arg.length, true);
    const setState = index === VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE && (flags & VFIO_DEVICE_FEATURE_SET) !== 0 && run;
    // data_fd is the device's answer, never the client's: whatever the client put there goes.
    if (setState && arg.length >= 16) argView.setInt32(12, -1, true);
    let ok = false;
    try {
      await this.#file.ioctl(VFIO_DEVICE_FEATURE, arg);
      ok = true;
    } finally {
      if (setState) {
        const requested = payload.length >= 12 ? view.getUint32(8, true) : -1;
        await this.#afterSetState(requested, ok && arg.length >= 16 ? argView.getInt32(12, true) : -1).catch(() => undefined);
      }
    }
    // SET and PROBE answer with the request as the device left it (DMA_LOGGING_START's page
    // size may have changed); data_fd means nothing over vfio-user. GET adds the feature's data.
    const length = (flags & VFIO_DEVICE_FEATURE_GET) === 0 || !run ? request.length : Math.min(arg.length, 8 + getDataBytes(index, arg));
    const reply = arg.slice(0, length);
    const replyView = new DataView(reply.buffer);
    replyView.setUint32(0, length, true);
    if (index === VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE && length >= 16) replyView.setInt32(12, -1, true);
    return [reply];
  }

  /**
   * After a MIG_DEVICE_STATE SET (successful or not): keep the data fd it returned, or, once
   * the device is in a state without a session, close the one held.
   */
  async #afterSetState(requested: number, returnedFd: number): Promise<void> {
    const state = await this.#currentState();
    if (returnedFd >= 0 && state === requested) {
      if (this.#fd !== undefined && this.#fd !== returnedFd) await this.#closeFd();
      this.#fd = returnedFd;
      this.#direction = state === VFIO_DEVICE_STATE_RESUMING ? "resuming" : "saving";
    } else if (!SESSION_STATES.has(state)) {
      await this.#closeFd();
    }
  }

  async #currentState(): Promise<number> {
    const arg = new Uint8Array(16);
    const view = new DataView(arg.buffer);
    view.setUint32(0, 16, true);
    view.setUint32(4, VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, true);
    await this.#file.ioctl(VFIO_DEVICE_FEATURE, arg);
    return view.getUint32(8, true);
  }

  async #closeFd(): Promise<void> {
    const fd = this.#fd;
    this.#fd = undefined;
    this.#direction = undefined;
    if (fd !== undefined) await this.#file.close(fd).catch(() => undefined);
  }

  /** VFIO_USER_MIG_DATA_READ: { argsz, size } -> { argsz, size, data }. */
  async read(payload: Uint8Array): Promise<Reply> {
    if (payload.length < 8) throw new VfioUserError("EINVAL", `MIG_DATA_READ needs 8 bytes, got ${payload.length}`);
    const view = new DataView(payload.buffer, payload.byteOffset, payload.length);
    const argsz = view.getUint32(0, true);
    const size = view.getUint32(4, true);
    if (size > this.#max) throw new VfioUserError("EINVAL", `MIG_DATA_READ of ${size} bytes is over max_data_xfer_size ${this.#max}`);
    if (argsz < 8 + size) throw new VfioUserError("EINVAL", `MIG_DATA_READ argsz ${argsz} cannot hold ${size} bytes`);
    if (this.#direction !== "saving" || this.#fd === undefined) {
      throw new MigrationError("EINVAL", `MIG_DATA_READ outside a saving state (device is ${this.#device.state})`);
    }
    const parts: Uint8Array[] = [];
    let got = 0;
    while (got < size) {
      let chunk: Uint8Array;
      try {
        chunk = await this.#file.read(this.#fd, size - got);
      } catch (error) {
        // Nothing more for now (PRE_COPY): a short reply says so; with nothing at all the
        // client sees the kernel's ENOMSG.
        if (error instanceof MigrationError && error.code === "ENOMSG" && got > 0) break;
        throw error;
      }
      if (chunk.length === 0) break; // end of the stream
      parts.push(chunk);
      got += chunk.length;
    }
    const head = new Uint8Array(8);
    const headView = new DataView(head.buffer);
    headView.setUint32(0, 8 + got, true);
    headView.setUint32(4, got, true);
    // Once the socket has the bytes, the session may reuse their memory for later stream
    // bytes (read() hands out its own buffers; memory never given back is fresh each time).
    const session = this.#device.session;
    const sent = session instanceof SavingSession ? () => parts.forEach((p) => session.release(p)) : undefined;
    return { parts: [head, ...parts], ...(sent ? { sent } : {}) };
  }

  /** VFIO_USER_MIG_DATA_WRITE: { argsz, size, data }; no reply payload. */
  async write(payload: Uint8Array): Promise<Uint8Array[]> {
    if (payload.length < 8) throw new VfioUserError("EINVAL", `MIG_DATA_WRITE needs 8 bytes, got ${payload.length}`);
    const view = new DataView(payload.buffer, payload.byteOffset, payload.length);
    const size = view.getUint32(4, true);
    if (size > this.#max) throw new VfioUserError("EINVAL", `MIG_DATA_WRITE of ${size} bytes is over max_data_xfer_size ${this.#max}`);
    if (payload.length !== 8 + size) throw new VfioUserError("EINVAL", `MIG_DATA_WRITE says ${size} bytes but carries ${payload.length - 8}`);
    if (this.#direction !== "resuming" || this.#fd === undefined) {
      throw new MigrationError("EINVAL", `MIG_DATA_WRITE outside RESUMING (device is ${this.#device.state})`);
    }
    let at = 8;
    while (at < payload.length) {
      const written = await this.#file.write(this.#fd, payload.subarray(at));
      if (written <= 0) throw new MigrationError("EIO", "the data fd took no bytes");
      at += written;
    }
    return [];
  }

  /** VFIO_DEVICE_RESET through the device file: any session ends, the device is back in RUNNING. */
  async reset(): Promise<void> {
    await this.#closeFd();
    await this.#file.ioctl(VFIO_DEVICE_RESET, new Uint8Array(0));
  }
}
