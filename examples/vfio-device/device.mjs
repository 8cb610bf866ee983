// A small emulated device, wired to migstream the way a device author wires a real one:
//
// - a register file of 64 u32 registers, in the emulator's own memory (an ArrayBuffer): the
//   device keeps it there and tells migstream what it changed (markDirty);
// - a DMA ring: descriptors the device writes into guest memory by DMA (dmaWrite), which DMA
//   logging records so the VMM can send the guest pages the device dirtied;
// - an internal scratch area (in migstream's memory) the device updates with each descriptor.
//
// Everything the two example processes exchange goes through openVfioDevice()'s bytes.
import { MigrationDevice, xxh3 } from "migstream";

export const PAGE = 4096;
/** Guest memory: 64 pages at this IOVA (above 4 GiB, so the 64-bit IOVAs are exercised). */
export const GUEST_IOVA = 0x1_0000_0000n;
export const GUEST_BYTES = 64 * PAGE;
/** The DMA ring: 256 descriptors of 16 bytes at the start of guest memory. */
const RING_ENTRIES = 256;
const DESCRIPTOR_BYTES = 16;
/** Register numbers. */
const REG_HEAD = 0;
const REG_COUNT = 1;
const REG_SEED = 2;

export class EmulatedDevice {
  constructor(guest) {
    /** The register file, in the emulator's own memory. */
    this.regs = new Uint8Array(new ArrayBuffer(64 * 4));
    this.regView = new DataView(this.regs.buffer);
    /** Guest memory as this side's VMM holds it (the device reaches it only by DMA). */
    this.guest = guest;
    this.resets = 0;
    this.migration = new MigrationDevice({
      deviceId: "example-dma-ring/1",
      regions: [
        { name: "regs", memory: this.regs },
        { name: "scratch", size: 8 * PAGE },
      ],
      // The device's DMA writes land in guest memory (after DMA logging recorded them).
      guestMemory: (iova, bytes) => this.guest.set(bytes, Number(BigInt(iova) - GUEST_IOVA)),
      callbacks: {
        // One hook for every arc; a real device would gate its queues here.
        arc: (from, to) => {
          this.lastArc = `${from}->${to}`;
        },
        reset: () => {
          this.resets++;
          this.regs.fill(0);
        },
      },
    });
  }

  reg(n) {
    return this.regView.getUint32(n * 4, true);
  }

  setReg(n, value) {
    this.regView.setUint32(n * 4, value >>> 0, true);
    this.migration.markDirty("regs", n * 4, 4);
  }

  /** One unit of work: a descriptor DMA-written into the ring, the head register bumped. */
  step() {
    const head = this.reg(REG_HEAD);
    const count = this.reg(REG_COUNT) + 1;
    const seed = (Math.imul(this.reg(REG_SEED) ^ count, 0x9e3779b1) + 0x7f4a7c15) >>> 0;
    const descriptor = new Uint8Array(DESCRIPTOR_BYTES);
    const view = new DataView(descriptor.buffer);
    view.setUint32(0, count, true);
    view.setUint32(4, seed, true);
    view.setBigUint64(8, GUEST_IOVA + BigInt(PAGE * (1 + (seed % 63))), true);
    this.migration.dmaWrite(GUEST_IOVA + BigInt(head * DESCRIPTOR_BYTES), descriptor);
    // The buffer the descriptor points to is written by DMA too.
    this.migration.dmaWrite(GUEST_IOVA + BigInt(PAGE * (1 + (seed % 63)) + (count % 64) * 32), descriptor);
    // Internal state: a running record of what was sent (in migstream's memory).
    this.migration.write("scratch", (count * DESCRIPTOR_BYTES) % (8 * PAGE), descriptor);
    this.setReg(REG_HEAD, (head + 1) % RING_ENTRIES);
    this.setReg(REG_COUNT, count);
    this.setReg(REG_SEED, seed);
  }

  /** A digest of everything that must arrive: device state and guest memory. */
  digest() {
    const state = this.migration.model.snapshot();
    const all = new Uint8Array(state.length + this.guest.length);
    all.set(state);
    all.set(this.guest, state.length);
    return xxh3(all).toString(16);
  }
}

// Frames on the pipe between the two processes: u8 kind, u32 length (little-endian), bytes.
export const FRAME_DEVICE_DATA = 1;
export const FRAME_GUEST_PAGE = 2;
export const FRAME_END = 3;

export function frame(kind, payload) {
  const out = new Uint8Array(5 + payload.length);
  out[0] = kind;
  new DataView(out.buffer).setUint32(1, payload.length, true);
  out.set(payload, 5);
  return out;
}

/** Reads frames from a stream of chunks (stdin): yields { kind, payload }. */
export async function* frames(input) {
  let pending = new Uint8Array(0);
  for await (const chunk of input) {
    const joined = new Uint8Array(pending.length + chunk.length);
    joined.set(pending);
    joined.set(chunk, pending.length);
    let at = 0;
    while (joined.length - at >= 5) {
      const length = new DataView(joined.buffer, joined.byteOffset + at + 1, 4).getUint32(0, true);
      if (joined.length - at - 5 < length) break;
      yield { kind: joined[at], payload: joined.subarray(at + 5, at + 5 + length) };
      at += 5 + length;
    }
    pending = joined.slice(at);
  }
  if (pending.length > 0) throw new Error(`the stream ended inside a frame (${pending.length} bytes left)`);
}
