// serveVfioUser: one MigrationDevice served as a PCI function on a UNIX socket, to one
// vfio-user client at a time. A client that leaves takes its DMA windows and interrupt setup
// with it; the device (its content and migration state, an open data session included) stays
// as it is for the next client.
import { chmod, link, lstat, mkdtemp, rm, unlink } from "node:fs/promises";
import { createServer, type Server, type Socket } from "node:net";
import { dirname, join } from "node:path";
import { MigrationError } from "../../core/errors.js";
import type { MigrationDevice } from "../../migration/v2/migration-device.js";
import { ClientConnection } from "./connection.js";
import { DeviceHandlers } from "./handlers.js";
import { openVfioDevice, type VfioDeviceFile } from "../../migration/vfio-bytes/index.js";
import { MigrationMessages } from "./migration.js";
import { PciConfigSpace, type PciIdentity } from "./pci.js";
import { DEFAULT_MAX_DATA_XFER_SIZE, VFIO_USER_DMA_READ, VFIO_USER_DMA_WRITE } from "./protocol.js";

export interface VfioUserServerOptions {
  /** The UNIX socket path; created 0600, refused if something exists there. */
  path: string;
  /** The device's byte-level uAPI file the migration messages go to. Default: openVfioDevice(device). */
  deviceFile?: VfioDeviceFile;
  /** Largest count of one data message either way (`max_data_xfer_size`). Default 1 MiB. */
  maxDataXferSize?: number;
  /** A message begun must be complete within this long, or the client is dropped. Default 10 s. */
  messageTimeoutMs?: number;
  /** The client must answer a DMA_READ / DMA_WRITE within this long. Default 10 s. */
  dmaTimeoutMs?: number;
  /** DMA windows one client may map (`max_dma_maps`). Default 1024. */
  maxDmaWindows?: number;
  /** PCI identity in config space (vendor, device, class...). */
  pci?: PciIdentity;
  /** Called after VFIO_USER_DEVICE_RESET reset the migration state and config space. */
  onReset?: () => void;
  /**
   * The device's reaction to a REGION_WRITE into one of its BARs (a doorbell, a command
   * register), called after the bytes landed in region `region` (the device's region index).
   * The reply waits for it; it may do DMA through the server. A throw is an error reply
   * (a MigrationError's code as the errno, EIO otherwise).
   */
  onRegionWrite?: (region: number, offset: number, bytes: Uint8Array) => void | Promise<void>;
}

export interface VfioUserServer {
  readonly path: string;
  /** True while a client is connected. */
  readonly connected: boolean;
  /** True while the client has INTx masked. */
  readonly intxMasked: boolean;
  /**
   * The device writes guest memory: recorded by DMA logging (MigrationDevice.dmaWrite, so only
   * while the device runs), then sent to the client as DMA_WRITE messages of at most its
   * max_data_xfer_size. EINVAL outside the client's writable windows, EIO without a client or
   * on its error reply, ETIMEDOUT if it does not answer.
   */
  dmaWrite(address: number, bytes: Uint8Array): Promise<void>;
  /** The device reads guest memory through DMA_READ messages (same rules, readable windows). */
  dmaRead(address: number, length: number): Promise<Uint8Array>;
  /** Drops the client, stops listening and removes the socket file. */
  close(): Promise<void>;
}

/** sun_path holds 108 bytes, the terminating NUL included. */
const MAX_SOCKET_PATH = 107;

function positive(name: string, value: number | undefined, fallback: number, max = Number.MAX_SAFE_INTEGER): number {
  const v = value ?? fallback;
  if (!Number.isSafeInteger(v) || v < 1 || v > max) throw new MigrationError("EINVAL", `${name} must be an integer from 1 to ${max}, got ${String(value)}`);
  return v;
}

function listen(server: Server, path: string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(path, () => {
      server.off("error", reject);
      resolve();
    });
  });
}

/**
 * Binds `path` with mode 0600 from the first moment: the socket is made in a private
 * directory beside it, restricted, then linked into place (which also refuses an existing
 * path). Returns the inode, so that close removes only this socket.
 */
async function bindPrivate(server: Server, path: string): Promise<number> {
  const dir = await mkdtemp(join(dirname(path), ".vfio-user-")).catch((error: unknown) => {
    throw new MigrationError("EIO", `cannot create a socket beside ${path}: ${(error as Error).message}`, { cause: error });
  });
  const temp = join(dir, "s");
  try {
    if (Buffer.byteLength(temp) > MAX_SOCKET_PATH || Buffer.byteLength(path) > MAX_SOCKET_PATH) {
      throw new MigrationError("EINVAL", `socket path ${JSON.stringify(path)} is too long for a UNIX socket`);
    }
    await listen(server, temp);
    await chmod(temp, 0o600);
    try {
      await link(temp, path);
    } catch (error) {
      server.close();
      const code = (error as NodeJS.ErrnoException).code;
      if (code === "EEXIST") throw new MigrationError("EINVAL", `${path} already exists`, { cause: error });
      throw new MigrationError("EIO", `cannot create ${path}: ${(error as Error).message}`, { cause: error });
    }
    return (await lstat(path)).ino;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Segments cut again into messages of at most `step` bytes. */
function* pieces(segments: readonly { address: number; length: number }[], step: number): Generator<{ address: number; length: number }> {
  for (const s of segments) {
    for (let at = 0; at < s.length; at += step) yield { address: s.address + at, length: Math.min(step, s.length - at) };
  }
}

/** struct vfio_user_dma_region_access without its data: u64 address, u64 count. */
function dmaHead(address: number, count: number): Uint8Array {
  const head = new Uint8Array(16);
  const view = new DataView(head.buffer);
  view.setBigUint64(0, BigInt(address), true);
  view.setBigUint64(8, BigInt(count), true);
  return head;
}

export async function serveVfioUser(device: MigrationDevice, options: VfioUserServerOptions): Promise<VfioUserServer> {
  const maxDataXferSize = positive("maxDataXferSize", options.maxDataXferSize, DEFAULT_MAX_DATA_XFER_SIZE, 64 << 20);
  const limits = {
    // The largest message: a data message's count plus its fixed fields, or a DMA logging
    // start with 256 ranges; the header size is checked against this before any allocation.
    maxMessageSize: maxDataXferSize + 4096 + 16,
    messageTimeoutMs: positive("messageTimeoutMs", options.messageTimeoutMs, 10_000, 2 ** 31 - 1),
    dmaTimeoutMs: positive("dmaTimeoutMs", options.dmaTimeoutMs, 10_000, 2 ** 31 - 1),
    maxDmaWindows: positive("maxDmaWindows", options.maxDmaWindows, 1024, 65535),
  };
  const config = new PciConfigSpace(
    device.model.regions.map((r) => r.size),
    options.pci,
  );
  const migration = new MigrationMessages(device, options.deviceFile ?? openVfioDevice(device), { maxDataXferSize });
  const handlers = new DeviceHandlers(device, config, migration, {
    maxDataXferSize,
    maxDmaWindows: limits.maxDmaWindows,
    minLogPageSize: device.model.dma.minPageSize,
    maxLogPageSize: device.model.dma.maxPageSize,
    ...(options.onReset ? { onReset: options.onReset } : {}),
    ...(options.onRegionWrite ? { onRegionWrite: options.onRegionWrite } : {}),
  });
  let current: ClientConnection | undefined;
  /** A client that came while another was still connected (perhaps just leaving). */
  let waiting: { socket: Socket; timer: ReturnType<typeof setTimeout> } | undefined;
  const adopt = (socket: Socket): void => {
    const connection = new ClientConnection(
      socket,
      limits,
      (c, header, payload) => handlers.dispatch(c, header, payload),
      () => {
        // Runs as soon as this client is gone (before a next one can be adopted).
        if (current !== connection) return;
        current = undefined;
        // DMA logging tracked the client's guest memory, which is no longer mapped.
        device.stopDmaLogging();
        handlers.disconnected();
        const next = waiting;
        waiting = undefined;
        if (next) {
          clearTimeout(next.timer);
          if (!next.socket.destroyed) adopt(next.socket);
        }
      },
    );
    current = connection;
    socket.resume();
  };
  const server = createServer({ allowHalfOpen: false, pauseOnConnect: true }, (socket: Socket) => {
    socket.on("error", () => socket.destroy());
    if (!current || current.closed) {
      adopt(socket);
      return;
    }
    // One client at a time. A client reconnecting may arrive before its old connection's end
    // is seen here, so one newcomer waits (unread) for the current client to go, up to the
    // message deadline; any other is hung up on at once.
    if (waiting) {
      socket.destroy();
      return;
    }
    const timer = setTimeout(() => {
      if (waiting?.socket !== socket) return;
      waiting = undefined;
      socket.destroy();
    }, limits.messageTimeoutMs);
    waiting = { socket, timer };
    socket.once("close", () => {
      if (waiting?.socket !== socket) return;
      clearTimeout(timer);
      waiting = undefined;
    });
  });
  const inode = await bindPrivate(server, options.path);

  const client = (): ClientConnection => {
    if (!current || current.closed) throw new MigrationError("EIO", "no vfio-user client is connected");
    return current;
  };
  const chunkSize = (c: ClientConnection): number => Math.min(c.clientMaxDataXfer, maxDataXferSize);
  let closed = false;

  return {
    path: options.path,
    get connected() {
      return current !== undefined && !current.closed;
    },
    get intxMasked() {
      return handlers.intxMasked;
    },
    async dmaWrite(address, bytes) {
      const c = client();
      const segments = c.dma.segments(address, bytes.length, "write");
      device.dmaWrite(address, bytes);
      for (const piece of pieces(segments, chunkSize(c))) {
        const part = bytes.subarray(piece.address - address, piece.address - address + piece.length);
        const reply = await c.request(VFIO_USER_DMA_WRITE, [dmaHead(piece.address, piece.length), part]);
        if (reply.length < 12) throw new MigrationError("EIO", `DMA_WRITE reply of ${reply.length} bytes`);
      }
    },
    async dmaRead(address, length) {
      const c = client();
      const segments = c.dma.segments(address, length, "read");
      const out = new Uint8Array(length);
      for (const piece of pieces(segments, chunkSize(c))) {
        const reply = await c.request(VFIO_USER_DMA_READ, [dmaHead(piece.address, piece.length)]);
        if (reply.length !== 16 + piece.length) throw new MigrationError("EIO", `DMA_READ of ${piece.length} bytes answered with ${reply.length - 16}`);
        out.set(reply.subarray(16), piece.address - address);
      }
      return out;
    },
    async close() {
      if (closed) return;
      closed = true;
      if (waiting) {
        clearTimeout(waiting.timer);
        waiting.socket.destroy();
        waiting = undefined;
      }
      current?.close();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      // Remove the socket only if it is still the one made here.
      const now = await lstat(options.path).catch(() => undefined);
      if (now?.ino === inode) await unlink(options.path).catch(() => undefined);
    },
  };
}
