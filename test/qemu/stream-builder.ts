// Hand-made QEMU migration streams for the hostile-input tests: every part of the format as
// separate bytes, so that a test can change exactly one thing. Golden streams from QEMU itself
// are in test/fixtures/qemu/.

import { concat } from "../codec/stream-builder.js";

const enc = new TextEncoder();

export function u8(...bytes: number[]): Uint8Array {
  return Uint8Array.from(bytes);
}

export function be32(n: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, n);
  return b;
}

export function be16(n: number): Uint8Array {
  const b = new Uint8Array(2);
  new DataView(b.buffer).setUint16(0, n);
  return b;
}

export function be64(n: bigint | number): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(n));
  return b;
}

/** Concatenation of byte arrays (the codec tests' helper). */
export const cat = (...parts: Uint8Array[]): Uint8Array => concat(...parts);

function str8(s: string): Uint8Array {
  const b = enc.encode(s);
  return cat(u8(b.length), b);
}

export const header = (): Uint8Array => cat(be32(0x5145564d), be32(3));
export const configuration = (machine = "pc-i440fx-7.2", ...subsections: Uint8Array[]): Uint8Array =>
  cat(u8(0x07), be32(enc.encode(machine).length), enc.encode(machine), ...subsections);
export const capabilities = (...caps: string[]): Uint8Array => cat(u8(0x05), str8("configuration/capabilities"), be32(1), be32(caps.length), ...caps.map(str8));

export function sectionStart(type: 0x01 | 0x04, id: number, name: string, instance: number, version: number): Uint8Array {
  return cat(u8(type), be32(id), str8(name), be32(instance), be32(version));
}
export const footer = (id: number): Uint8Array => cat(u8(0x7e), be32(id));
export const eos = (): Uint8Array => be64(0x10);

export interface BlockSpec {
  name: string;
  size: number;
}

/** START of the RAM section: MEM_SIZE, the block list, EOS, footer. */
export function ramStart(id: number, blocks: BlockSpec[]): Uint8Array {
  const total = blocks.reduce((n, b) => n + b.size, 0);
  return cat(sectionStart(0x01, id, "ram", 0, 4), be64(BigInt(total) | 4n), ...blocks.flatMap((b) => [str8(b.name), be64(b.size)]), eos(), footer(id));
}

/** A PART (0x02) or END (0x03) RAM section around `records`. */
export const ramPart = (type: 0x02 | 0x03, id: number, ...records: Uint8Array[]): Uint8Array => cat(u8(type), be32(id), ...records, eos(), footer(id));

const flagsOf = (offset: number, flags: number, name?: string): Uint8Array[] =>
  name === undefined ? [be64(BigInt(offset) | BigInt(flags | 0x20))] : [be64(BigInt(offset) | BigInt(flags)), str8(name)];

export const zeroPage = (offset: number, name?: string, fill = 0): Uint8Array => cat(...flagsOf(offset, 0x02, name), u8(fill));
export const normalPage = (offset: number, data: Uint8Array, name?: string): Uint8Array => cat(...flagsOf(offset, 0x08, name), data);
export const xbzrlePage = (offset: number, delta: Uint8Array, name?: string): Uint8Array =>
  cat(...flagsOf(offset, 0x40, name), u8(1), be16(delta.length), delta);

export interface DeviceSpec {
  name: string;
  instance: number;
  version: number;
  /** Field sizes, in order (the data is filled with a pattern). */
  fields: number[];
  subsections?: Array<{ name: string; version: number; fields: number[] }>;
}

function fieldBytes(sizes: number[], seed: number): Uint8Array {
  const n = sizes.reduce((a, b) => a + b, 0);
  return Uint8Array.from({ length: n }, (_, i) => (i * 7 + seed) & 0xff);
}

/** A FULL device section as QEMU writes it, and its entry in the VM description. */
export function device(id: number, spec: DeviceSpec): { bytes: Uint8Array; json: Record<string, unknown> } {
  const subs = spec.subsections ?? [];
  const bytes = cat(
    sectionStart(0x04, id, spec.name, spec.instance, spec.version),
    fieldBytes(spec.fields, id),
    ...subs.flatMap((s) => [u8(0x05), str8(s.name), be32(s.version), fieldBytes(s.fields, id + 1)]),
    footer(id),
  );
  const fields = (sizes: number[]) => sizes.map((size, i) => ({ name: `f${i}`, type: "buffer", size }));
  const json = {
    name: spec.name,
    instance_id: spec.instance,
    vmsd_name: spec.name,
    version: spec.version,
    fields: fields(spec.fields),
    ...(subs.length ? { subsections: subs.map((s) => ({ vmsd_name: s.name, version: s.version, fields: fields(s.fields) })) } : {}),
  };
  return { bytes, json };
}

/** EOF, then the VM description. */
export function ending(description: unknown): Uint8Array {
  const json = enc.encode(typeof description === "string" ? description : JSON.stringify(description));
  return cat(u8(0x00), u8(0x06), be32(json.length), json);
}

export const SMALL_BLOCKS: BlockSpec[] = [
  { name: "pc.ram", size: 8192 },
  { name: "/rom@etc/acpi/rsdp", size: 4096 },
];
export const SMALL_DEVICES: DeviceSpec[] = [
  { name: "timer", instance: 0, version: 2, fields: [8, 8, 8] },
  { name: "cpu", instance: 0, version: 12, fields: [4, 2, 16], subsections: [{ name: "cpu/poll_control_msr", version: 1, fields: [8] }] },
];

/** Page contents of the small stream. */
export const PAGE_A = Uint8Array.from({ length: 4096 }, (_, i) => (i * 13 + 1) & 0xff);
export const PAGE_B = Uint8Array.from({ length: 4096 }, (_, i) => (i * 5 + 3) & 0xff);
/** XBZRLE delta turning PAGE_B into PAGE_B with bytes 10..12 set to 0xee: zrun 10, nzrun 3. */
export const DELTA = u8(10, 3, 0xee, 0xee, 0xee);

/**
 * A small complete stream: two blocks, normal, zero and XBZRLE pages (with and without
 * CONTINUE) over a PART and an END, two devices (one with a subsection), EOF and the JSON.
 */
export function smallStream(overrides: { devices?: DeviceSpec[]; description?: unknown; ram?: Uint8Array[] } = {}): Uint8Array {
  const devices = (overrides.devices ?? SMALL_DEVICES).map((d, i) => device(3 + i, d));
  const description = overrides.description ?? { page_size: 4096, devices: devices.map((d) => d.json) };
  const ram = overrides.ram ?? [
    ramPart(0x02, 2, normalPage(0, PAGE_A, "pc.ram"), zeroPage(4096), normalPage(0, PAGE_B, "/rom@etc/acpi/rsdp")),
    ramPart(0x03, 2, xbzrlePage(0, DELTA), zeroPage(0, "pc.ram")),
  ];
  return cat(header(), configuration(), ramStart(2, SMALL_BLOCKS), ...ram, ...devices.map((d) => d.bytes), ending(description));
}
