// A writer of QEMU migration streams that QEMU 7.2 loads with -incoming: the prologue (header
// and configuration) and the tail (device sections, EOF, VM description) byte for byte from a
// stream QEMU wrote, and the RAM as ZERO and PAGE records framed in the Wasm core:
//
//   prologue | START ram: MEM_SIZE, block list, EOS, footer
//            | PART ram: every page of every block in order, EOS, footer
//            | END ram: EOS, footer | tail
import { MigrationError } from "../core/errors.js";
import { guarded } from "../core/instance.js";
import { QEMU_MAGIC, QEMU_PAGE_SIZE, RAM_SECTION, RamFlag, Section } from "./constants.js";
import { latin1Bytes } from "./latin1.js";
import type { QemuDeviceState } from "./reader.js";

/** Pages framed per kernel call. */
const BATCH = 256 * QEMU_PAGE_SIZE;

export interface QemuWriterSummary {
  bytes: number;
  pages: { normal: number; zero: number };
}

/**
 * Writes a stream for `state`: call write() with each block's bytes in order (any split, whole
 * pages), then end(). `ondata` gets views that are valid only during the call.
 */
export class QemuStreamWriter {
  readonly #state: QemuDeviceState;
  readonly #ondata: (bytes: Uint8Array) => void;
  #block = 0;
  #offset = 0;
  #bytes = 0;
  #normal = 0;
  #zero = 0;
  #started = false;
  #ended = false;
  #continued = false;

  constructor(state: QemuDeviceState, ondata: (bytes: Uint8Array) => void) {
    const p = state.prologue;
    if (p.length < 8 || new DataView(p.buffer, p.byteOffset, p.length).getUint32(0) !== QEMU_MAGIC) {
      throw new MigrationError("EINVAL", "QEMU writer: the prologue is not the start of a QEMU stream");
    }
    if (state.tail.length < 1 || (state.tail[0] !== Section.FULL && state.tail[0] !== Section.EOF)) {
      throw new MigrationError("EINVAL", "QEMU writer: the tail does not start with a device section or EOF");
    }
    if (state.blocks.length === 0) throw new MigrationError("EINVAL", "QEMU writer: no RAM blocks");
    for (const b of state.blocks) {
      if (!Number.isSafeInteger(b.size) || b.size <= 0 || b.size % QEMU_PAGE_SIZE !== 0 || b.name.length === 0 || b.name.length > 255) {
        throw new MigrationError("EINVAL", `QEMU writer: RAM block ${JSON.stringify(b.name)} of ${b.size} bytes cannot be written`);
      }
    }
    this.#state = state;
    this.#ondata = ondata;
  }

  /** The RAM blocks, in the order write() takes them. */
  get blocks(): QemuDeviceState["blocks"] {
    return this.#state.blocks;
  }

  #emit(bytes: Uint8Array): void {
    this.#bytes += bytes.length;
    this.#ondata(bytes);
  }

  #start(): void {
    this.#started = true;
    const s = this.#state;
    const { id, instance, version } = s.ramSection;
    this.#emit(s.prologue);
    const names = s.blocks.map((b) => latin1Bytes(b.name));
    const total = s.blocks.reduce((n, b) => n + b.size, 0);
    const head = new Uint8Array(14 + RAM_SECTION.length + 8 + names.reduce((n, b) => n + 9 + b.length, 0) + 8 + 5 + 5);
    const v = new DataView(head.buffer);
    let p = 0;
    head[p++] = Section.START;
    v.setUint32(p, id);
    p += 4;
    head[p++] = RAM_SECTION.length;
    head.set(latin1Bytes(RAM_SECTION), p);
    p += RAM_SECTION.length;
    v.setUint32(p, instance);
    v.setUint32(p + 4, version);
    p += 8;
    v.setBigUint64(p, BigInt(total) | BigInt(RamFlag.MEM_SIZE));
    p += 8;
    for (const [i, b] of s.blocks.entries()) {
      head[p++] = names[i]!.length;
      head.set(names[i]!, p);
      p += names[i]!.length;
      v.setBigUint64(p, BigInt(b.size));
      p += 8;
    }
    v.setBigUint64(p, BigInt(RamFlag.EOS));
    p += 8;
    head[p++] = Section.FOOTER;
    v.setUint32(p, id);
    p += 4;
    head[p++] = Section.PART;
    v.setUint32(p, id);
    this.#emit(head);
  }

  /** The next bytes of the RAM, continuing where the last call stopped (blocks in order). */
  write(data: Uint8Array): void {
    if (this.#ended) throw new MigrationError("EINVAL", "QEMU writer: write() after end()");
    if (!this.#started) this.#start();
    let at = 0;
    while (at < data.length) {
      const block = this.#state.blocks[this.#block];
      if (!block) throw new MigrationError("EINVAL", "QEMU writer: more RAM than the blocks hold");
      const take = Math.min(data.length - at, block.size - this.#offset, BATCH);
      if (take % QEMU_PAGE_SIZE !== 0) throw new MigrationError("EINVAL", "QEMU writer: RAM must be written in whole pages");
      this.#frame(this.#block, this.#offset, data.subarray(at, at + take));
      at += take;
      this.#offset += take;
      if (this.#offset === block.size) {
        this.#block++;
        this.#offset = 0;
        this.#continued = false;
      }
    }
  }

  #frame(block: number, offset: number, data: Uint8Array): void {
    const name = latin1Bytes(this.#state.blocks[block]!.name);
    const pages = data.length / QEMU_PAGE_SIZE;
    const outCap = pages * (9 + QEMU_PAGE_SIZE) + 256 + name.length;
    guarded((c) => {
      const src = c.owns(data) ? data.byteOffset : c.scratch(data.length + outCap + 320);
      const out = c.owns(data) ? c.scratch(outCap + 320) : src + alignUp(data.length);
      const namePtr = out + alignUp(outCap);
      const zeroCell = namePtr + 256;
      if (!c.owns(data)) c.u8.set(data, src);
      c.u8.set(name, namePtr);
      const len =
        c.exports.qemu_ram_write(src, data.length, QEMU_PAGE_SIZE, BigInt(offset), namePtr, name.length, this.#continued ? 1 : 0, out, zeroCell) >>> 0;
      const zeros = new DataView(c.memory.buffer).getUint32(zeroCell, true);
      this.#zero += zeros;
      this.#normal += pages - zeros;
      this.#continued = true;
      this.#emit(c.u8.subarray(out, out + len));
    });
  }

  /** Ends the RAM and writes the tail; every block must have been written whole. */
  end(): QemuWriterSummary {
    if (this.#ended) throw new MigrationError("EINVAL", "QEMU writer: end() twice");
    if (!this.#started) this.#start();
    if (this.#block !== this.#state.blocks.length) {
      const b = this.#state.blocks[this.#block]!;
      throw new MigrationError("EINVAL", `QEMU writer: RAM ended ${this.#offset} bytes into block ${JSON.stringify(b.name)} of ${b.size}`);
    }
    this.#ended = true;
    const id = this.#state.ramSection.id;
    const close = new Uint8Array(8 + 5 + 5 + 8 + 5);
    const v = new DataView(close.buffer);
    v.setBigUint64(0, BigInt(RamFlag.EOS));
    close[8] = Section.FOOTER;
    v.setUint32(9, id);
    close[13] = Section.END;
    v.setUint32(14, id);
    v.setBigUint64(18, BigInt(RamFlag.EOS));
    close[26] = Section.FOOTER;
    v.setUint32(27, id);
    this.#emit(close);
    this.#emit(this.#state.tail);
    return { bytes: this.#bytes, pages: { normal: this.#normal, zero: this.#zero } };
  }
}

function alignUp(n: number): number {
  return Math.ceil(n / 64) * 64;
}
