// What each client command does to the served device: version negotiation, device, region and
// interrupt info, region access (config space and the BARs over the device's regions), DMA
// windows, reset, and the migration messages (migration.ts).
import type { MigrationDevice } from "../../migration/v2/migration-device.js";
import type { ClientConnection, Reply } from "./connection.js";
import { DMA_UNMAP_FLAG_ALL, DMA_UNMAP_FLAG_GET_DIRTY_BITMAP, u64 } from "./dma.js";
import type { MigrationMessages } from "./migration.js";
import { PCI_CONFIG_SIZE, type PciConfigSpace, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_NUM_IRQS, VFIO_PCI_NUM_REGIONS } from "./pci.js";
import {
  type Header,
  VFIO_USER_DEVICE_FEATURE,
  VFIO_USER_DEVICE_GET_INFO,
  VFIO_USER_DEVICE_GET_IRQ_INFO,
  VFIO_USER_DEVICE_GET_REGION_INFO,
  VFIO_USER_DEVICE_RESET,
  VFIO_USER_DEVICE_SET_IRQS,
  VFIO_USER_DMA_MAP,
  VFIO_USER_DMA_UNMAP,
  VFIO_USER_MAJOR,
  VFIO_USER_MIG_DATA_READ,
  VFIO_USER_MIG_DATA_WRITE,
  VFIO_USER_MINOR,
  VFIO_USER_REGION_READ,
  VFIO_USER_REGION_WRITE,
  VFIO_USER_REGION_WRITE_MULTI,
  VFIO_USER_VERSION,
  VfioUserError,
} from "./protocol.js";

const VFIO_DEVICE_FLAGS_RESET = 1;
const VFIO_DEVICE_FLAGS_PCI = 2;
const REGION_FLAG_READ = 1;
const REGION_FLAG_WRITE = 2;
/** INTx: maskable and automasked; no EVENTFD flag, since no eventfd can reach this process. */
const IRQ_INFO_MASKABLE = 2;
const IRQ_INFO_AUTOMASKED = 4;
const IRQ_SET_DATA_NONE = 1;
const IRQ_SET_DATA_BOOL = 2;
const IRQ_SET_DATA_EVENTFD = 4;
const IRQ_SET_ACTION_MASK = 8;
const IRQ_SET_ACTION_UNMASK = 16;
const IRQ_SET_ACTION_TRIGGER = 32;

export interface HandlerOptions {
  maxDataXferSize: number;
  maxDmaWindows: number;
  /** Page sizes DMA logging can track (the `migration.pgsize` capability). */
  minLogPageSize: number;
  maxLogPageSize: number;
  onReset?: () => void;
  onRegionWrite?: (region: number, offset: number, bytes: Uint8Array) => void | Promise<void>;
}

function payloadView(payload: Uint8Array, least: number, what: string): DataView {
  if (payload.length < least) throw new VfioUserError("EINVAL", `${what} needs ${least} bytes, got ${payload.length}`);
  return new DataView(payload.buffer, payload.byteOffset, payload.length);
}

function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && 2 ** Math.round(Math.log2(n)) === n;
}

export class DeviceHandlers {
  readonly #device: MigrationDevice;
  readonly #config: PciConfigSpace;
  readonly #migration: MigrationMessages;
  readonly #options: HandlerOptions;
  /** The DMA logging page size the client asked for in VERSION (migration.pgsize). */
  #logPageSize: number;
  #intxMasked = false;

  constructor(device: MigrationDevice, config: PciConfigSpace, migration: MigrationMessages, options: HandlerOptions) {
    this.#device = device;
    this.#config = config;
    this.#migration = migration;
    this.#options = options;
    this.#logPageSize = options.minLogPageSize;
  }

  /** True while the client has INTx masked (SET_IRQS MASK / UNMASK). */
  get intxMasked(): boolean {
    return this.#intxMasked;
  }

  /** A client went away: what belonged to it (its windows, its interrupt setup) goes too. */
  disconnected(): void {
    this.#intxMasked = false;
  }

  dispatch(connection: ClientConnection, header: Header, payload: Uint8Array): Promise<readonly Uint8Array[] | Reply> | readonly Uint8Array[] | Reply {
    if (header.command === VFIO_USER_VERSION) return this.#version(connection, payload);
    if (!connection.negotiated) throw new VfioUserError("EINVAL", `command ${header.command} before VERSION`);
    switch (header.command) {
      case VFIO_USER_DMA_MAP:
        return this.#dmaMap(connection, payload);
      case VFIO_USER_DMA_UNMAP:
        return this.#dmaUnmap(connection, payload);
      case VFIO_USER_DEVICE_GET_INFO:
        return this.#deviceInfo(payload);
      case VFIO_USER_DEVICE_GET_REGION_INFO:
        return this.#regionInfo(payload);
      case VFIO_USER_DEVICE_GET_IRQ_INFO:
        return this.#irqInfo(payload);
      case VFIO_USER_DEVICE_SET_IRQS:
        return this.#setIrqs(payload);
      case VFIO_USER_REGION_READ:
        return this.#regionRead(payload);
      case VFIO_USER_REGION_WRITE:
        return this.#regionWrite(payload);
      case VFIO_USER_REGION_WRITE_MULTI:
        return this.#regionWriteMulti(payload);
      case VFIO_USER_DEVICE_RESET:
        return this.#reset();
      case VFIO_USER_DEVICE_FEATURE:
        return this.#migration.feature(payload, connection);
      case VFIO_USER_MIG_DATA_READ:
        return this.#migration.read(payload);
      case VFIO_USER_MIG_DATA_WRITE:
        return this.#migration.write(payload);
      default:
        // Unknown, or known and not offered (GET_REGION_IO_FDS, the old DIRTY_PAGES): an error
        // reply, never a dropped connection.
        throw new VfioUserError("ENOTSUP", `command ${header.command} is not implemented`);
    }
  }

  #version(connection: ClientConnection, payload: Uint8Array): Uint8Array[] {
    if (connection.negotiated) throw new VfioUserError("EINVAL", "VERSION was already negotiated");
    const view = payloadView(payload, 4, "VERSION");
    const major = view.getUint16(0, true);
    const minor = view.getUint16(2, true);
    if (major !== VFIO_USER_MAJOR) throw new VfioUserError("ENOTSUP", `protocol major ${major}; this server speaks ${VFIO_USER_MAJOR}`);
    let clientMaxXfer = connection.clientMaxDataXfer;
    let logPageSize = this.#options.minLogPageSize;
    if (payload.length > 4) {
      const text = payload.subarray(4);
      if (text[text.length - 1] !== 0) throw new VfioUserError("EINVAL", "VERSION data is not NUL-terminated");
      let json: unknown;
      try {
        json = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(text.subarray(0, text.length - 1)));
      } catch {
        throw new VfioUserError("EINVAL", "VERSION data is not UTF-8 JSON");
      }
      if (typeof json !== "object" || json === null || Array.isArray(json)) throw new VfioUserError("EINVAL", "VERSION data is not a JSON object");
      const caps = (json as { capabilities?: unknown }).capabilities;
      if (caps !== undefined) {
        if (typeof caps !== "object" || caps === null || Array.isArray(caps)) throw new VfioUserError("EINVAL", "capabilities is not an object");
        const c = caps as Record<string, unknown>;
        const integer = (name: string, value: unknown, least: number): number => {
          if (typeof value !== "number" || !Number.isSafeInteger(value) || value < least)
            throw new VfioUserError("EINVAL", `capability ${name} must be an integer >= ${least}`);
          return value;
        };
        if (c.max_msg_fds !== undefined) integer("max_msg_fds", c.max_msg_fds, 0);
        if (c.max_data_xfer_size !== undefined) clientMaxXfer = integer("max_data_xfer_size", c.max_data_xfer_size, 1);
        if (c.migration !== undefined) {
          if (typeof c.migration !== "object" || c.migration === null) throw new VfioUserError("EINVAL", "capability migration is not an object");
          const pgsize = (c.migration as { pgsize?: unknown }).pgsize;
          if (pgsize !== undefined) {
            logPageSize = integer("migration.pgsize", pgsize, 1);
            if (!isPowerOfTwo(logPageSize) || logPageSize < this.#options.minLogPageSize || logPageSize > this.#options.maxLogPageSize) {
              throw new VfioUserError("EINVAL", `migration.pgsize ${logPageSize} is not a page size DMA logging can track`);
            }
          }
        }
      }
    }
    connection.clientMaxDataXfer = clientMaxXfer;
    connection.negotiated = true;
    this.#logPageSize = logPageSize;
    const capabilities = {
      capabilities: {
        // No descriptor can reach this process (see dma.ts), so none may be sent.
        max_msg_fds: 0,
        max_data_xfer_size: this.#options.maxDataXferSize,
        max_dma_maps: this.#options.maxDmaWindows,
        pgsizes: 4096,
        write_multiple: true,
        migration: { pgsize: this.#logPageSize },
      },
    };
    const text = new TextEncoder().encode(`${JSON.stringify(capabilities)}\0`);
    const head = new Uint8Array(4);
    const headView = new DataView(head.buffer);
    headView.setUint16(0, VFIO_USER_MAJOR, true);
    headView.setUint16(2, Math.min(minor, VFIO_USER_MINOR), true);
    return [head, text];
  }

  #deviceInfo(payload: Uint8Array): Uint8Array[] {
    const view = payloadView(payload, 16, "DEVICE_GET_INFO");
    if (view.getUint32(0, true) < 16) throw new VfioUserError("EINVAL", "DEVICE_GET_INFO argsz is under 16");
    const reply = new Uint8Array(16);
    const r = new DataView(reply.buffer);
    r.setUint32(0, 16, true);
    r.setUint32(4, VFIO_DEVICE_FLAGS_RESET | VFIO_DEVICE_FLAGS_PCI, true);
    r.setUint32(8, VFIO_PCI_NUM_REGIONS, true);
    r.setUint32(12, VFIO_PCI_NUM_IRQS, true);
    return [reply];
  }

  /** Size of region `index` as the client sees it (0: absent). */
  #regionSize(index: number): number {
    if (index === VFIO_PCI_CONFIG_REGION_INDEX) return PCI_CONFIG_SIZE;
    return this.#config.barSizes[index] ?? 0;
  }

  #regionInfo(payload: Uint8Array): Uint8Array[] {
    const view = payloadView(payload, 32, "DEVICE_GET_REGION_INFO");
    if (view.getUint32(0, true) < 32) throw new VfioUserError("EINVAL", "DEVICE_GET_REGION_INFO argsz is under 32");
    const index = view.getUint32(8, true);
    if (index >= VFIO_PCI_NUM_REGIONS) throw new VfioUserError("EINVAL", `no region ${index}`);
    const size = this.#regionSize(index);
    const reply = new Uint8Array(32);
    const r = new DataView(reply.buffer);
    r.setUint32(0, 32, true);
    r.setUint32(4, size > 0 ? REGION_FLAG_READ | REGION_FLAG_WRITE : 0, true);
    r.setUint32(8, index, true);
    r.setBigUint64(16, BigInt(size), true);
    // VFIO's convention: region i at offset i << 40 of the device file (not mappable here).
    r.setBigUint64(24, BigInt(index) << 40n, true);
    return [reply];
  }

  #irqInfo(payload: Uint8Array): Uint8Array[] {
    const view = payloadView(payload, 16, "DEVICE_GET_IRQ_INFO");
    if (view.getUint32(0, true) < 16) throw new VfioUserError("EINVAL", "DEVICE_GET_IRQ_INFO argsz is under 16");
    const index = view.getUint32(8, true);
    if (index >= VFIO_PCI_NUM_IRQS) throw new VfioUserError("EINVAL", `no interrupt index ${index}`);
    const reply = new Uint8Array(16);
    const r = new DataView(reply.buffer);
    r.setUint32(0, 16, true);
    r.setUint32(4, index === VFIO_PCI_INTX_IRQ_INDEX ? IRQ_INFO_MASKABLE | IRQ_INFO_AUTOMASKED : 0, true);
    r.setUint32(8, index, true);
    r.setUint32(12, index === VFIO_PCI_INTX_IRQ_INDEX ? 1 : 0, true);
    return [reply];
  }

  #setIrqs(payload: Uint8Array): Uint8Array[] {
    const view = payloadView(payload, 20, "DEVICE_SET_IRQS");
    const flags = view.getUint32(4, true);
    const index = view.getUint32(8, true);
    const start = view.getUint32(12, true);
    const count = view.getUint32(16, true);
    const data = flags & (IRQ_SET_DATA_NONE | IRQ_SET_DATA_BOOL | IRQ_SET_DATA_EVENTFD);
    const action = flags & (IRQ_SET_ACTION_MASK | IRQ_SET_ACTION_UNMASK | IRQ_SET_ACTION_TRIGGER);
    const one = (bits: number): boolean => bits !== 0 && (bits & (bits - 1)) === 0;
    if (!one(data) || !one(action) || (flags & ~0x3f) !== 0) throw new VfioUserError("EINVAL", `SET_IRQS flags ${flags} need one data and one action flag`);
    if (index >= VFIO_PCI_NUM_IRQS) throw new VfioUserError("EINVAL", `no interrupt index ${index}`);
    const available = index === VFIO_PCI_INTX_IRQ_INDEX ? 1 : 0;
    // count 0 with DATA_NONE: "all of the index", a no-op request for indexes with none.
    if (count === 0 && data === IRQ_SET_DATA_NONE) return [];
    if (start + count > available) throw new VfioUserError("EINVAL", `interrupts ${start}..${start + count - 1} of index ${index}: it has ${available}`);
    if (data === IRQ_SET_DATA_EVENTFD) {
      // The eventfds were dropped by the kernel on the way in (no fd reaches this process).
      throw new VfioUserError("ENOTSUP", "eventfds cannot be received by this server (see max_msg_fds 0)");
    }
    if (data === IRQ_SET_DATA_BOOL && payload.length < 20 + count) throw new VfioUserError("EINVAL", "SET_IRQS DATA_BOOL carries fewer booleans than count");
    const apply = data === IRQ_SET_DATA_NONE || payload[20] !== 0;
    if (apply && action === IRQ_SET_ACTION_MASK) this.#intxMasked = true;
    if (apply && action === IRQ_SET_ACTION_UNMASK) this.#intxMasked = false;
    return [];
  }

  /** Checks a region access; returns the region's index among the device's regions, or -1 for config space. */
  #access(view: DataView, data: number, what: string): { region: number; offset: number; count: number } {
    const offset = u64(view, 0, `${what} offset`);
    const index = view.getUint32(8, true);
    const count = view.getUint32(12, true);
    if (count > this.#options.maxDataXferSize) throw new VfioUserError("EINVAL", `${what} of ${count} bytes is over max_data_xfer_size`);
    const size = index < VFIO_PCI_NUM_REGIONS ? this.#regionSize(index) : 0;
    if (size === 0) throw new VfioUserError("EINVAL", `${what}: no region ${index}`);
    if (offset + count > size) throw new VfioUserError("EINVAL", `${what} [${offset}, +${count}) is outside region ${index} of ${size} bytes`);
    if (data >= 0 && data !== count) throw new VfioUserError("EINVAL", `${what} says ${count} bytes but carries ${data}`);
    return { region: index === VFIO_PCI_CONFIG_REGION_INDEX ? -1 : index, offset, count };
  }

  #regionRead(payload: Uint8Array): Uint8Array[] {
    const view = payloadView(payload, 16, "REGION_READ");
    const { region, offset, count } = this.#access(view, -1, "REGION_READ");
    let data: Uint8Array;
    if (region < 0) data = this.#config.read(offset, count);
    else {
      // The BAR past the device's region reads as zeros.
      data = new Uint8Array(count);
      const bytes = this.#device.model.view(region);
      if (offset < bytes.length) data.set(bytes.subarray(offset, Math.min(bytes.length, offset + count)));
    }
    return [payload.slice(0, 16), data];
  }

  async #regionWrite(payload: Uint8Array): Promise<Uint8Array[]> {
    const view = payloadView(payload, 16, "REGION_WRITE");
    await this.#write(this.#access(view, payload.length - 16, "REGION_WRITE"), payload.subarray(16));
    return [payload.slice(0, 16)];
  }

  /**
   * VFIO_USER_REGION_WRITE_MULTI: { wr_cnt u64, then wr_cnt of { offset u64, region u32,
   * count u32 (at most 8), data[8] } }, done in order; the reply is the count done.
   */
  async #regionWriteMulti(payload: Uint8Array): Promise<Uint8Array[]> {
    const view = payloadView(payload, 8, "REGION_WRITE_MULTI");
    const writes = view.getBigUint64(0, true);
    if (BigInt(payload.length) !== 8n + 24n * writes) throw new VfioUserError("EINVAL", `REGION_WRITE_MULTI says ${writes} writes in ${payload.length} bytes`);
    for (let i = 0; i < Number(writes); i++) {
      const entry = payload.subarray(8 + 24 * i, 32 + 24 * i);
      const count = view.getUint32(8 + 24 * i + 12, true);
      if (count > 8) throw new VfioUserError("EINVAL", `REGION_WRITE_MULTI write ${i} of ${count} bytes (at most 8)`);
      const entryView = new DataView(entry.buffer, entry.byteOffset, 16);
      await this.#write(this.#access(entryView, count, "REGION_WRITE_MULTI"), entry.subarray(16, 16 + count));
    }
    return [payload.slice(0, 8)];
  }

  /** A checked write of `data` into config space or one of the device's regions. */
  async #write({ region, offset, count }: { region: number; offset: number; count: number }, data: Uint8Array): Promise<void> {
    if (region < 0) {
      this.#config.write(offset, data.subarray(0, count));
      return;
    }
    // The device's own write (refused while it is stopped: a stopped device does not change).
    const size = this.#device.model.regions[region]!.size;
    if (offset >= size) return;
    const landed = data.subarray(0, Math.min(count, size - offset));
    this.#device.write(region, offset, landed);
    await this.#options.onRegionWrite?.(region, offset, landed);
  }

  #dmaMap(connection: ClientConnection, payload: Uint8Array): Uint8Array[] {
    const view = payloadView(payload, 32, "DMA_MAP");
    connection.dma.map(u64(view, 16, "DMA_MAP address"), u64(view, 24, "DMA_MAP size"), view.getUint32(4, true));
    return [];
  }

  #dmaUnmap(connection: ClientConnection, payload: Uint8Array): Uint8Array[] {
    const view = payloadView(payload, 24, "DMA_UNMAP");
    const flags = view.getUint32(4, true);
    const address = u64(view, 8, "DMA_UNMAP address");
    const size = u64(view, 16, "DMA_UNMAP size");
    if ((flags & DMA_UNMAP_FLAG_GET_DIRTY_BITMAP) !== 0) throw new VfioUserError("ENOTSUP", "DMA_UNMAP dirty bitmaps are not offered (use DMA logging)");
    if ((flags & ~DMA_UNMAP_FLAG_ALL) !== 0) throw new VfioUserError("EINVAL", `unknown DMA_UNMAP flags ${flags}`);
    if ((flags & DMA_UNMAP_FLAG_ALL) !== 0) {
      if (address !== 0 || size !== 0) throw new VfioUserError("EINVAL", "DMA_UNMAP of all windows takes address 0 and size 0");
      connection.dma.clear();
    } else connection.dma.unmap(address, size);
    return [payload.slice(0, 24)];
  }

  async #reset(): Promise<Uint8Array[]> {
    await this.#migration.reset();
    this.#config.reset();
    this.#intxMasked = false;
    this.#options.onReset?.();
    return [];
  }
}
