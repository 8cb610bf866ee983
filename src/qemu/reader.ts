// A push reader of QEMU's migration stream (file format 3, as QEMU 7.2 writes it): any input
// segmentation, typed errors with the byte offset of the element at fault, limits checked
// before anything is allocated. RAM pages run through the Wasm kernel (ram-kernel.ts) one batch
// at a time; device sections are delimited with the VM description QEMU appends after EOF,
// given up front (a seekable input read from its end) or found when the input ends (the device
// part is then buffered, up to a limit).
import { concatBytes } from "../core/bytes.js";
import { MigrationError, type MigrationErrorCode } from "../core/errors.js";
import { type Core, guarded } from "../core/instance.js";
import {
  COMMAND_FEATURES,
  ITERABLE_FEATURES,
  QEMU_MAGIC,
  QEMU_PAGE_SIZE,
  QEMU_VERSION,
  RAM_SECTION,
  RAM_SECTION_VERSION,
  RamFlag,
  Section,
} from "./constants.js";
import { latin1 } from "./latin1.js";
import { type RamBlock, RamKernel, type RamMode, RamStatus, ramProblem } from "./ram-kernel.js";
import { type DeviceLayout, findDescription, parseVmDescription, type VmDescription } from "./vmdesc.js";

export interface QemuReaderOptions {
  /** What becomes of the RAM pages (ram-kernel.ts). Default: checked, kept nowhere. */
  ram?: RamMode;
  /**
   * The VM description JSON (the bytes after EOF's VMDESCRIPTION header), when the caller read
   * it from the end of a seekable input: device sections are then walked as they arrive and the
   * stream's own copy must be the same bytes.
   */
  description?: Uint8Array;
  /** Largest total RAM the block list may declare. Default 64 GiB. */
  maxRamBytes?: number;
  /** Most RAM blocks. Default 1024. */
  maxBlocks?: number;
  /** Largest device part (device sections up to EOF) buffered or described. Default 64 MiB. */
  maxDeviceBytes?: number;
  /** Largest VM description. Default 16 MiB. */
  maxDescriptionBytes?: number;
  /** Keep the bytes a writer needs to re-create the stream (deviceState()). Default true. */
  keepDeviceState?: boolean;
  /** Called with the block list once it is complete, before any page is read. */
  onblocks?: (blocks: readonly RamBlock[]) => void;
}

export const QEMU_READER_DEFAULTS = {
  maxRamBytes: 64 * 2 ** 30,
  maxBlocks: 1024,
  maxDeviceBytes: 64 * 2 ** 20,
  maxDescriptionBytes: 16 * 2 ** 20,
} as const;

/** A section as inspect lists it: `bytes` counts its headers and footers (all parts for RAM). */
export interface QemuSectionInfo {
  name: string;
  instance: number;
  version: number;
  bytes: number;
}

export interface QemuStreamSummary {
  /** The machine type from the configuration section ("pc-i440fx-7.2"), "" without one. */
  machine: string;
  ramBlocks: RamBlock[];
  pages: { normal: number; zero: number; xbzrle: number };
  /** RAM sections after the setup one (PART and END): one per pass QEMU made over dirty RAM. */
  iterations: number;
  sections: QemuSectionInfo[];
  /** Stream bytes read. */
  bytes: number;
  /** True once EOF and the VM description were read and checked. */
  ended: boolean;
}

/** Everything but the RAM pages, byte for byte: what a writer needs to build a loadable stream. */
export interface QemuDeviceState {
  /** Header and configuration section: the bytes before the RAM section starts. */
  prologue: Uint8Array;
  /** The RAM section's header fields. */
  ramSection: { id: number; instance: number; version: number };
  /** The RAM blocks of the block list, in order. */
  blocks: RamBlock[];
  /** Device sections, EOF, VMDESCRIPTION and its JSON: the bytes after the last RAM section. */
  tail: Uint8Array;
}

type State = "header" | "configuration" | "configSubsection" | "section" | "ramBlocks" | "ram" | "footer" | "devices" | "description" | "buffer" | "done";

/** Input is taken in slices of this size, so the window never holds much more than one. */
const SLICE = 1 << 20;

export class QemuStreamReader {
  readonly #options: Required<Omit<QemuReaderOptions, "description" | "ram" | "onblocks">>;
  readonly #onblocks: ((blocks: readonly RamBlock[]) => void) | undefined;
  readonly #mode: RamMode;
  #given: Uint8Array | undefined;
  #description: VmDescription | undefined;
  readonly #core: Core;
  // The window: stream bytes [#offset, #offset + #end - #start) at core memory #ptr + #start.
  #ptr = 0;
  #cap = 0;
  #start = 0;
  #end = 0;
  #offset = 0;
  #state: State = "header";
  #failed: MigrationError | undefined;

  #machine = "";
  #blocks: RamBlock[] = [];
  #blocksLeft = 0;
  #ramTotal = 0;
  #ram: { id: number; instance: number; version: number } | undefined;
  #ramInfo: QemuSectionInfo | undefined;
  #kernel: RamKernel | undefined;
  #iterations = 0;
  /** Section whose footer is due: its id and where it began. */
  #open = { id: 0, at: 0, device: false };
  #sections: QemuSectionInfo[] = [];
  #deviceIndex = 0;
  #deviceStart = -1;

  #prologue: Uint8Array[] | undefined = [];
  #tail: Uint8Array[] = [];
  #ended = false;

  constructor(options: QemuReaderOptions = {}) {
    this.#options = {
      maxRamBytes: options.maxRamBytes ?? QEMU_READER_DEFAULTS.maxRamBytes,
      maxBlocks: options.maxBlocks ?? QEMU_READER_DEFAULTS.maxBlocks,
      maxDeviceBytes: options.maxDeviceBytes ?? QEMU_READER_DEFAULTS.maxDeviceBytes,
      maxDescriptionBytes: options.maxDescriptionBytes ?? QEMU_READER_DEFAULTS.maxDescriptionBytes,
      keepDeviceState: options.keepDeviceState ?? true,
    };
    for (const [name, value] of Object.entries(this.#options)) {
      if (typeof value === "number" && (!Number.isSafeInteger(value) || value < 0))
        throw new MigrationError("EINVAL", `QEMU reader: ${name} must be a non-negative integer`);
    }
    this.#mode = options.ram ?? { kind: "check" };
    this.#onblocks = options.onblocks;
    this.#core = guarded((c) => c);
    if (options.description !== undefined) {
      if (options.description.length > this.#options.maxDescriptionBytes) {
        throw new MigrationError("E2BIG", `VM description of ${options.description.length} bytes exceeds the limit of ${this.#options.maxDescriptionBytes}`);
      }
      this.#given = options.description.slice();
      this.#description = parseVmDescription(this.#given, this.#options.maxDeviceBytes);
    }
  }

  /** Takes the next bytes of the stream, in any segmentation. */
  push(chunk: Uint8Array): void {
    if (this.#failed) throw this.#failed;
    if (this.#ended) throw new MigrationError("EINVAL", "QEMU reader: push() after end()");
    try {
      for (let at = 0; at < chunk.length; at += SLICE) {
        this.#append(chunk.subarray(at, Math.min(chunk.length, at + SLICE)));
        this.#drain();
      }
    } catch (error) {
      this.#fail(error);
    }
  }

  /** The input ended: the stream must be complete. */
  end(): QemuStreamSummary {
    if (this.#failed) throw this.#failed;
    this.#ended = true;
    try {
      if (this.#state === "buffer") this.#finishBuffered();
      if (this.#state !== "done") {
        throw new MigrationError("ENODATA", `stream ends at byte ${this.#offset + this.#avail} inside ${this.#where()}`, {
          byteOffset: this.#offset + this.#avail,
        });
      }
      if (this.#mode.kind === "spill") this.#kernel?.flush();
    } catch (error) {
      this.#fail(error);
    }
    return this.summary();
  }

  /** Drops everything held in core memory (call once done with read()). */
  release(): void {
    this.#kernel?.release();
    if (this.#cap > 0) this.#core.free(this.#ptr);
    this.#cap = 0;
  }

  summary(): QemuStreamSummary {
    return {
      machine: this.#machine,
      ramBlocks: this.#blocks.map((b) => ({ ...b })),
      pages: this.#kernel?.counts ?? { normal: 0, zero: 0, xbzrle: 0 },
      iterations: this.#iterations,
      sections: this.#sections.map((s) => ({ ...s })),
      bytes: this.#offset + this.#avail,
      ended: this.#state === "done",
    };
  }

  /** The RAM image (memory mode): `length` bytes of block `block` from `offset`. */
  read(block: number | string, offset?: number, length?: number): Uint8Array {
    const kernel = this.#kernel;
    const index = typeof block === "number" ? block : this.#blocks.findIndex((b) => b.name === block);
    if (!kernel || index < 0 || index >= this.#blocks.length) throw new MigrationError("EINVAL", `no RAM block ${String(block)} in this stream`);
    return kernel.read(index, offset, length);
  }

  /** Everything but the pages, for a writer (after end(); needs keepDeviceState). */
  deviceState(): QemuDeviceState {
    if (this.#state !== "done" || !this.#ram || !this.#options.keepDeviceState) {
      throw new MigrationError("EINVAL", "QEMU reader: the device state is known only after a complete stream, read with keepDeviceState");
    }
    return { prologue: this.#prologueBytes, ramSection: { ...this.#ram }, blocks: this.#blocks.map((b) => ({ ...b })), tail: concatBytes(this.#tail) };
  }

  // -------------------------------------------------------------------------------------------
  // The window

  get #avail(): number {
    return this.#end - this.#start;
  }

  #append(bytes: Uint8Array): void {
    if (this.#end + bytes.length > this.#cap) {
      const need = this.#avail + bytes.length;
      const c = this.#core;
      if (need <= this.#cap) {
        c.u8.copyWithin(this.#ptr, this.#ptr + this.#start, this.#ptr + this.#end);
      } else {
        const cap = Math.max(need, this.#cap * 2, SLICE + 65536);
        const ptr = c.alloc(cap);
        if (this.#cap > 0) {
          c.u8.copyWithin(ptr, this.#ptr + this.#start, this.#ptr + this.#end);
          c.free(this.#ptr);
        }
        this.#ptr = ptr;
        this.#cap = cap;
      }
      this.#end = this.#avail;
      this.#start = 0;
    }
    this.#core.u8.set(bytes, this.#ptr + this.#end);
    this.#end += bytes.length;
  }

  /** A view of the next `n` bytes (valid until the next allocation). */
  #peek(n: number, from = 0): Uint8Array {
    const at = this.#ptr + this.#start + from;
    return this.#core.u8.subarray(at, at + n);
  }

  #view(): DataView {
    return new DataView(this.#core.memory.buffer, this.#ptr + this.#start, this.#avail);
  }

  #consume(n: number): void {
    if (this.#prologue && this.#options.keepDeviceState) this.#prologue.push(this.#peek(n).slice());
    else if (this.#deviceStart >= 0 && this.#options.keepDeviceState) this.#tail.push(this.#peek(n).slice());
    this.#start += n;
    this.#offset += n;
  }

  // -------------------------------------------------------------------------------------------
  // The stream

  #drain(): void {
    while (this.#step()) {
      /* each step consumed something or changed state */
    }
  }

  /** Makes one step of progress; false when more input is needed. */
  #step(): boolean {
    switch (this.#state) {
      case "header":
        return this.#header();
      case "configuration":
        return this.#configuration();
      case "configSubsection":
        return this.#configSubsection();
      case "section":
        return this.#section();
      case "ramBlocks":
        return this.#ramBlocks();
      case "ram":
        return this.#ramPages();
      case "footer":
        return this.#footer();
      case "devices":
        return this.#device();
      case "description":
        return this.#descriptionStep();
      case "buffer":
        if (this.#avail > this.#options.maxDeviceBytes + this.#options.maxDescriptionBytes + 10) {
          throw new MigrationError(
            "E2BIG",
            `device sections and VM description exceed ${this.#options.maxDeviceBytes + this.#options.maxDescriptionBytes} bytes while waiting for the description (raise maxDeviceBytes, or read the file from its end)`,
            { byteOffset: this.#offset },
          );
        }
        return false;
      case "done":
        if (this.#avail > 0) throw this.#corrupt("bytes after the VM description", this.#offset);
        return false;
    }
  }

  #header(): boolean {
    if (this.#avail < 8) return false;
    const v = this.#view();
    if (v.getUint32(0) !== QEMU_MAGIC) throw this.#corrupt("not a QEMU migration stream (bad magic)", this.#offset);
    const version = v.getUint32(4);
    if (version !== QEMU_VERSION)
      throw new MigrationError("EPROTONOSUPPORT", `QEMU stream file version ${version} (only ${QEMU_VERSION} is read)`, { byteOffset: this.#offset + 4 });
    this.#consume(8);
    this.#state = "configuration";
    return true;
  }

  #configuration(): boolean {
    if (this.#avail < 1) return false;
    if (this.#peek(1)[0] !== Section.CONFIGURATION) {
      this.#state = "section";
      return true;
    }
    if (this.#avail < 5) return false;
    const len = this.#view().getUint32(1);
    if (len > 256) throw this.#corrupt(`machine name of ${len} bytes in the configuration section`, this.#offset + 1);
    if (this.#avail < 5 + len) return false;
    this.#machine = latin1(this.#peek(len, 5));
    this.#consume(5 + len);
    this.#state = "configSubsection";
    return true;
  }

  /** Subsections of the configuration: target page bits, capabilities, uuid. */
  #configSubsection(): boolean {
    if (this.#avail < 1) return false;
    if (this.#peek(1)[0] !== Section.SUBSECTION) {
      this.#state = "section";
      return true;
    }
    if (this.#avail < 2) return false;
    const nameLen = this.#peek(2)[1]!;
    if (this.#avail < 6 + nameLen) return false;
    const name = latin1(this.#peek(nameLen, 2));
    const head = 6 + nameLen;
    const v = this.#view();
    const at = this.#offset;
    if (name === "configuration/target-page-bits") {
      if (this.#avail < head + 4) return false;
      const bits = v.getUint32(head);
      if (bits !== 12) throw new MigrationError("EPROTONOSUPPORT", `target page bits ${bits} (only 4 KiB pages, x86, are read)`, { byteOffset: at });
      this.#consume(head + 4);
    } else if (name === "configuration/uuid") {
      if (this.#avail < head + 16) return false;
      this.#consume(head + 16);
    } else if (name === "configuration/capabilities") {
      if (this.#avail < head + 4) return false;
      const count = v.getUint32(head);
      if (count > 64) throw this.#corrupt(`${count} capabilities in the configuration section`, at + head);
      let p = head + 4;
      const caps: string[] = [];
      for (let i = 0; i < count; i++) {
        if (this.#avail < p + 1) return false;
        const len = this.#peek(p + 1)[p]!;
        if (this.#avail < p + 1 + len) return false;
        caps.push(latin1(this.#peek(len, p + 1)));
        p += 1 + len;
      }
      for (const cap of caps) {
        const feature =
          cap === "x-ignore-shared"
            ? "x-ignore-shared (shared RAM is not in the stream)"
            : cap === "mapped-ram"
              ? "mapped-ram (pages at fixed file offsets)"
              : `the ${cap} capability`;
        throw new MigrationError("EPROTONOSUPPORT", `stream written with ${feature}: not decoded`, { byteOffset: at });
      }
      this.#consume(p);
    } else {
      throw new MigrationError("EPROTONOSUPPORT", `configuration subsection ${JSON.stringify(name)} is not known to this reader`, { byteOffset: at });
    }
    return true;
  }

  #section(): boolean {
    if (this.#avail < 1) return false;
    const type = this.#peek(1)[0]!;
    const at = this.#offset;
    switch (type) {
      case Section.START: {
        if (this.#avail < 6) return false;
        const idLen = this.#peek(6)[5]!;
        if (this.#avail < 14 + idLen) return false;
        const v = this.#view();
        const id = v.getUint32(1);
        const name = latin1(this.#peek(idLen, 6));
        const instance = v.getUint32(6 + idLen);
        const version = v.getUint32(10 + idLen);
        if (name !== RAM_SECTION) {
          const feature = ITERABLE_FEATURES[name] ?? `the iterable section ${JSON.stringify(name)}`;
          throw new MigrationError("EPROTONOSUPPORT", `stream carries ${feature}: not decoded`, { byteOffset: at });
        }
        if (this.#ram) throw this.#corrupt("a second RAM section start", at);
        if (version !== RAM_SECTION_VERSION)
          throw new MigrationError("EPROTONOSUPPORT", `RAM section version ${version} (only ${RAM_SECTION_VERSION} is read)`, { byteOffset: at });
        // The prologue (header and configuration) ends here.
        this.#closePrologue();
        this.#ram = { id, instance, version };
        this.#ramInfo = { name, instance, version, bytes: 0 };
        this.#sections.push(this.#ramInfo);
        this.#open = { id, at, device: false };
        this.#consume(14 + idLen);
        this.#state = "ramBlocks";
        this.#blocksLeft = -1;
        return true;
      }
      case Section.PART:
      case Section.END: {
        if (this.#avail < 5) return false;
        const id = this.#view().getUint32(1);
        if (!this.#ram || id !== this.#ram.id || !this.#kernel) throw this.#corrupt(`section part for unknown section id ${id}`, at);
        if (this.#deviceStart >= 0) throw this.#corrupt("RAM section after the device sections", at);
        this.#open = { id, at, device: false };
        this.#consume(5);
        this.#iterations++;
        this.#state = "ram";
        return true;
      }
      case Section.FULL:
      case Section.EOF: {
        this.#closePrologue();
        this.#deviceStart = at;
        if (this.#description) {
          this.#state = "devices";
        } else {
          this.#state = "buffer";
        }
        return true;
      }
      case Section.COMMAND: {
        if (this.#avail < 3) return false;
        const command = this.#view().getUint16(1);
        const feature = COMMAND_FEATURES[command] ?? `command ${command}`;
        throw new MigrationError("EPROTONOSUPPORT", `stream uses ${feature} (QEMU_VM_COMMAND): not decoded`, { byteOffset: at });
      }
      default:
        throw this.#corrupt(`unknown section type 0x${type.toString(16)}`, at);
    }
  }

  #closePrologue(): void {
    if (this.#prologue === undefined) return;
    this.#prologueBytes = concatBytes(this.#prologue);
    this.#prologue = undefined;
  }

  #prologueBytes: Uint8Array = new Uint8Array(0);

  /** MEM_SIZE and the block list that starts the RAM section. */
  #ramBlocks(): boolean {
    const v = () => this.#view();
    if (this.#blocksLeft < 0) {
      if (this.#avail < 8) return false;
      const word = v().getBigUint64(0);
      const flags = Number(word & BigInt(QEMU_PAGE_SIZE - 1));
      if (flags !== RamFlag.MEM_SIZE) throw this.#corrupt(`RAM section starts without its block list (flags 0x${flags.toString(16)})`, this.#offset);
      const total = word & ~BigInt(QEMU_PAGE_SIZE - 1);
      if (total > BigInt(this.#options.maxRamBytes)) {
        throw new MigrationError("E2BIG", `RAM of ${total} bytes exceeds the limit of ${this.#options.maxRamBytes} bytes`, { byteOffset: this.#offset });
      }
      this.#ramTotal = Number(total);
      this.#blocksLeft = this.#ramTotal;
      this.#consume(8);
      this.#ramInfo!.bytes += 8;
    }
    while (this.#blocksLeft > 0) {
      if (this.#avail < 1) return false;
      const len = this.#peek(1)[0]!;
      if (this.#avail < 9 + len) return false;
      const name = latin1(this.#peek(len, 1));
      const size = v().getBigUint64(1 + len);
      const at = this.#offset;
      if (len === 0) throw this.#corrupt("RAM block with an empty name", at);
      if (size === 0n || size > BigInt(this.#blocksLeft))
        throw this.#corrupt(`RAM block ${JSON.stringify(name)} of ${size} bytes does not fit the declared total of ${this.#ramTotal}`, at);
      if (size % BigInt(QEMU_PAGE_SIZE) !== 0n) throw this.#corrupt(`RAM block ${JSON.stringify(name)} of ${size} bytes is not whole pages`, at);
      if (this.#blocks.some((b) => b.name === name)) throw this.#corrupt(`RAM block ${JSON.stringify(name)} declared twice`, at);
      if (this.#blocks.length >= this.#options.maxBlocks)
        throw new MigrationError("E2BIG", `more than ${this.#options.maxBlocks} RAM blocks`, { byteOffset: at });
      this.#blocks.push({ name, size: Number(size) });
      this.#blocksLeft -= Number(size);
      this.#consume(9 + len);
      this.#ramInfo!.bytes += 9 + len;
    }
    this.#onblocks?.(this.#blocks.map((b) => ({ ...b })));
    this.#kernel = new RamKernel(this.#blocks, this.#mode, QEMU_PAGE_SIZE);
    this.#state = "ram";
    return true;
  }

  #ramPages(): boolean {
    const kernel = this.#kernel!;
    if (this.#avail === 0) return false;
    const { status, used, detail } = kernel.run(this.#ptr + this.#start, this.#avail);
    this.#ramInfo!.bytes += used;
    this.#start += used;
    this.#offset += used;
    if (status === RamStatus.EOS) {
      this.#state = "footer";
      return true;
    }
    if (status === RamStatus.NEED_INPUT) return false;
    const problem = ramProblem(status, detail);
    throw new MigrationError(problem.code as MigrationErrorCode, `${problem.message} at byte ${this.#offset}`, { byteOffset: this.#offset });
  }

  #footer(): boolean {
    if (this.#avail < 5) return false;
    const v = this.#view();
    const { id, at } = this.#open;
    if (v.getUint8(0) !== Section.FOOTER) throw this.#corrupt(`section ${id} (from byte ${at}) does not end with its footer`, this.#offset);
    if (v.getUint32(1) !== id) throw this.#corrupt(`section footer says section ${v.getUint32(1)}, but section ${id} is open`, this.#offset);
    if (!this.#open.device) this.#ramInfo!.bytes += 5;
    this.#consume(5);
    this.#state = this.#open.device ? "devices" : "section";
    return true;
  }

  /** One device section (FULL), or EOF, walked with the description. */
  #device(): boolean {
    const desc = this.#description!;
    if (this.#avail < 1) return false;
    const type = this.#peek(1)[0]!;
    const at = this.#offset;
    if (type === Section.EOF) {
      if (this.#deviceIndex !== desc.devices.length) {
        throw this.#corrupt(`EOF after ${this.#deviceIndex} device sections, but the VM description lists ${desc.devices.length}`, at);
      }
      this.#consume(1);
      this.#state = "description";
      return true;
    }
    if (type !== Section.FULL) throw this.#corrupt(`section type 0x${type.toString(16)} among the device sections`, at);
    if (this.#avail < 6) return false;
    const idLen = this.#peek(6)[5]!;
    if (this.#avail < 14 + idLen) return false;
    const v = this.#view();
    const id = v.getUint32(1);
    const name = latin1(this.#peek(idLen, 6));
    const instance = v.getUint32(6 + idLen);
    const version = v.getUint32(10 + idLen);
    const layout: DeviceLayout | undefined = desc.devices[this.#deviceIndex];
    if (!layout || layout.name !== name || layout.instanceId !== instance || layout.version !== version) {
      const said = layout ? `${layout.name} instance ${layout.instanceId} version ${layout.version}` : "no more devices";
      throw this.#corrupt(`device section ${JSON.stringify(name)} instance ${instance} version ${version} disagrees with the VM description (${said})`, at);
    }
    const head = 14 + idLen;
    const whole = head + layout.dataLength + 5;
    if (this.#avail < whole) return false;
    const bytes = this.#peek(whole);
    for (const mark of layout.marks) {
      const p = head + mark.at;
      const len = bytes[p + 1]!;
      const fits = bytes[p] === Section.SUBSECTION && len === mark.nameLength;
      const got = fits ? latin1(bytes.subarray(p + 2, p + 2 + len)) : undefined;
      const gotVersion = fits ? new DataView(bytes.buffer, bytes.byteOffset + p + 2 + len, 4).getUint32(0) : -1;
      if (got !== mark.name || gotVersion !== mark.version) {
        throw this.#corrupt(
          `device section ${JSON.stringify(name)}: subsection ${JSON.stringify(mark.name)} version ${mark.version} of the VM description is not in the stream`,
          at + p,
        );
      }
    }
    const footer = head + layout.dataLength;
    if (bytes[footer] !== Section.FOOTER || new DataView(bytes.buffer, bytes.byteOffset + footer + 1, 4).getUint32(0) !== id) {
      throw this.#corrupt(`device section ${JSON.stringify(name)} does not end where the VM description says (no footer at byte ${at + footer})`, at + footer);
    }
    this.#sections.push({ name, instance, version, bytes: whole });
    this.#deviceIndex++;
    this.#consume(whole);
    return true;
  }

  #descriptionStep(): boolean {
    if (this.#avail < 5) return false;
    const v = this.#view();
    if (v.getUint8(0) !== Section.VMDESCRIPTION) throw this.#corrupt("no VM description after EOF", this.#offset);
    const len = v.getUint32(1);
    if (len > this.#options.maxDescriptionBytes) {
      throw new MigrationError("E2BIG", `VM description of ${len} bytes exceeds the limit of ${this.#options.maxDescriptionBytes}`, {
        byteOffset: this.#offset,
      });
    }
    if (this.#avail < 5 + len) return false;
    const json = this.#peek(len, 5);
    if (this.#given && !equalBytes(json, this.#given)) throw this.#corrupt("the stream's VM description differs from the one given", this.#offset);
    this.#consume(5 + len);
    this.#state = "done";
    return true;
  }

  /** The input ended with the device part buffered: find the description and walk it. */
  #finishBuffered(): void {
    const tail = this.#peek(this.#avail);
    const eof = findDescription(tail);
    if (eof < 0) {
      throw new MigrationError(
        "ENODATA",
        `stream ends at byte ${this.#offset + this.#avail} without a VM description after its device sections (truncated, or written by a machine with suppress-vmdesc)`,
        { byteOffset: this.#offset + this.#avail },
      );
    }
    const jsonAt = eof + 6;
    if (this.#avail - jsonAt > this.#options.maxDescriptionBytes) {
      throw new MigrationError("E2BIG", `VM description of ${this.#avail - jsonAt} bytes exceeds the limit of ${this.#options.maxDescriptionBytes}`, {
        byteOffset: this.#offset + eof,
      });
    }
    if (eof > this.#options.maxDeviceBytes) {
      throw new MigrationError("E2BIG", `device sections of ${eof} bytes exceed the limit of ${this.#options.maxDeviceBytes}`, { byteOffset: this.#offset });
    }
    this.#description = parseVmDescription(tail.subarray(jsonAt), this.#options.maxDeviceBytes, this.#offset + jsonAt);
    this.#state = "devices";
    this.#drain();
  }

  #where(): string {
    switch (this.#state) {
      case "header":
        return "the file header";
      case "configuration":
      case "configSubsection":
        return "the configuration section";
      case "section":
        return "the stream: the next section is missing";
      case "ramBlocks":
        return "the RAM block list";
      case "ram":
        return "a RAM section (no EOS)";
      case "footer":
        return "a section footer";
      case "devices":
        return "the device sections";
      case "description":
        return "the VM description";
      default:
        return "the stream";
    }
  }

  #corrupt(message: string, byteOffset: number): MigrationError {
    return new MigrationError("EBADMSG", message, { byteOffset });
  }

  #fail(error: unknown): never {
    const e =
      error instanceof MigrationError ? error : new MigrationError("EIO", `QEMU reader: ${(error as Error)?.message ?? String(error)}`, { cause: error });
    this.#failed = e;
    this.release();
    throw e;
  }
}

/** Is `data` the start of a QEMU migration stream (its magic)? */
export function isQemuStream(data: Uint8Array): boolean {
  return data.length >= 4 && data[0] === 0x51 && data[1] === 0x45 && data[2] === 0x56 && data[3] === 0x4d;
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
