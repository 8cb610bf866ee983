// The PCI function a served device appears as: VFIO's region indexes, a type-0 configuration
// header, and one 32-bit memory BAR per device region. A BAR's size is a power of two (the PCI
// rule that lets software size it by writing all ones); the device region sits at its start
// and the rest of the BAR reads as zeros and ignores writes.
import { MigrationError } from "../../core/errors.js";

/** VFIO_PCI_*_REGION_INDEX: BAR0..BAR5 are 0..5, then the ROM, config space and VGA. */
export const VFIO_PCI_ROM_REGION_INDEX = 6;
export const VFIO_PCI_CONFIG_REGION_INDEX = 7;
export const VFIO_PCI_VGA_REGION_INDEX = 8;
export const VFIO_PCI_NUM_REGIONS = 9;
/** VFIO_PCI_*_IRQ_INDEX: INTx, MSI, MSI-X, ERR, REQ. */
export const VFIO_PCI_INTX_IRQ_INDEX = 0;
export const VFIO_PCI_NUM_IRQS = 5;

export const PCI_CONFIG_SIZE = 256;
export const PCI_BAR_COUNT = 6;
/** The smallest BAR handed out: one page, as PCI recommends for memory BARs. */
export const PCI_MIN_BAR_SIZE = 4096;
/** The largest 32-bit memory BAR. */
export const PCI_MAX_BAR_SIZE = 2 ** 31;

const COMMAND_WRITABLE = 0x0547; // I/O, memory, bus master, parity, SERR, INTx disable

export interface PciIdentity {
  vendorId?: number;
  deviceId?: number;
  subsystemVendorId?: number;
  subsystemId?: number;
  /** Class code (base class, subclass, programming interface), 24 bits. */
  classCode?: number;
  revision?: number;
}

/** The BAR size for a region of `size` bytes: the next power of two, at least one page. */
export function barSize(size: number): number {
  let bar = PCI_MIN_BAR_SIZE;
  while (bar < size) bar *= 2;
  return bar;
}

function checkId(name: string, value: number | undefined, fallback: number, bits: number): number {
  const v = value ?? fallback;
  if (!Number.isInteger(v) || v < 0 || v >= 2 ** bits) throw new MigrationError("EINVAL", `PCI ${name} must be a ${bits}-bit integer, got ${String(value)}`);
  return v;
}

/** Type-0 configuration space with BAR sizing, a writable command register and interrupt line. */
export class PciConfigSpace {
  readonly bytes = new Uint8Array(PCI_CONFIG_SIZE);
  readonly #view = new DataView(this.bytes.buffer);
  readonly #barSizes: number[];
  readonly #initial: Uint8Array;

  constructor(regionSizes: readonly number[], identity: PciIdentity = {}) {
    if (regionSizes.length > PCI_BAR_COUNT) {
      throw new MigrationError("EINVAL", `a PCI function has ${PCI_BAR_COUNT} BARs; the device has ${regionSizes.length} regions`);
    }
    this.#barSizes = regionSizes.map((size) => {
      const bar = barSize(size);
      if (bar > PCI_MAX_BAR_SIZE) throw new MigrationError("EINVAL", `region of ${size} bytes is larger than a 32-bit BAR (2 GiB)`);
      return bar;
    });
    const v = this.#view;
    v.setUint16(0x00, checkId("vendor id", identity.vendorId, 0x1234, 16), true);
    v.setUint16(0x02, checkId("device id", identity.deviceId, 0x0001, 16), true);
    v.setUint8(0x08, checkId("revision", identity.revision, 0, 8));
    const classCode = checkId("class code", identity.classCode, 0xff0000, 24);
    v.setUint8(0x09, classCode & 0xff);
    v.setUint8(0x0a, (classCode >>> 8) & 0xff);
    v.setUint8(0x0b, classCode >>> 16);
    v.setUint16(0x2c, checkId("subsystem vendor id", identity.subsystemVendorId, 0, 16), true);
    v.setUint16(0x2e, checkId("subsystem id", identity.subsystemId, 0, 16), true);
    v.setUint8(0x3d, 1); // interrupt pin INTA
    this.#initial = this.bytes.slice();
  }

  /** BAR sizes, one per device region. */
  get barSizes(): readonly number[] {
    return this.#barSizes;
  }

  /** Back to power-on values (a device reset). */
  reset(): void {
    this.bytes.set(this.#initial);
  }

  read(offset: number, count: number): Uint8Array {
    return this.bytes.slice(offset, offset + count);
  }

  /**
   * A write of `data` at `offset`: the command register, BAR addresses (low bits forced to the
   * BAR's size, so writing all ones reads back the size mask) and the interrupt line take it;
   * every other byte is read-only and keeps its value, as vfio-pci's virtual config space does.
   */
  write(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) {
      const at = offset + i;
      const byte = data[i]!;
      if (at === 0x04 || at === 0x05) {
        const mask = at === 0x04 ? COMMAND_WRITABLE & 0xff : COMMAND_WRITABLE >>> 8;
        this.bytes[at] = (this.bytes[at]! & ~mask) | (byte & mask);
      } else if (at >= 0x10 && at < 0x10 + 4 * PCI_BAR_COUNT) {
        this.bytes[at] = byte;
      } else if (at === 0x3c) {
        this.bytes[at] = byte;
      }
    }
    // BAR registers: address bits only; bits below the size read zero (32-bit memory,
    // not prefetchable: type bits 0); BARs without a region read zero.
    for (let bar = 0; bar < PCI_BAR_COUNT; bar++) {
      const at = 0x10 + 4 * bar;
      if (at + 4 <= offset || at >= offset + data.length) continue;
      const size = this.#barSizes[bar];
      const value = this.#view.getUint32(at, true);
      this.#view.setUint32(at, size === undefined ? 0 : (value & ~(size - 1) & 0xfffffff0) >>> 0, true);
    }
  }
}
