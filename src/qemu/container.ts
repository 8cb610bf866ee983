// The config blob that carries a QEMU stream's non-RAM parts through a migstream stream
// (`migstream convert`): its RAM travels as regions named like the blocks, and this blob holds
// everything else byte for byte, so that converting back gives a stream QEMU loads.
//
//   "MSQEMU01" | u32 ram section id | u32 instance | u32 version
//   | u32 prologue length | prologue | u32 tail length | tail          (big-endian)
import { MigrationError } from "../core/errors.js";
import type { RamBlock } from "./ram-kernel.js";
import type { QemuDeviceState } from "./reader.js";

const MAGIC = new TextEncoder().encode("MSQEMU01");

export function packDeviceState(state: QemuDeviceState): Uint8Array {
  const out = new Uint8Array(MAGIC.length + 12 + 4 + state.prologue.length + 4 + state.tail.length);
  const v = new DataView(out.buffer);
  out.set(MAGIC, 0);
  let p = MAGIC.length;
  v.setUint32(p, state.ramSection.id);
  v.setUint32(p + 4, state.ramSection.instance);
  v.setUint32(p + 8, state.ramSection.version);
  p += 12;
  v.setUint32(p, state.prologue.length);
  out.set(state.prologue, p + 4);
  p += 4 + state.prologue.length;
  v.setUint32(p, state.tail.length);
  out.set(state.tail, p + 4);
  return out;
}

/** True when a migstream config blob is one packDeviceState() wrote. */
export function isPackedDeviceState(blob: Uint8Array | undefined): boolean {
  return blob !== undefined && blob.length >= MAGIC.length && MAGIC.every((b, i) => blob[i] === b);
}

/** The device state from a config blob, with the blocks the stream's regions declare. */
export function unpackDeviceState(blob: Uint8Array, blocks: readonly RamBlock[]): QemuDeviceState {
  const bad = (): MigrationError => new MigrationError("EBADMSG", "config blob is not a QEMU device state (from migstream convert)");
  if (!isPackedDeviceState(blob)) throw bad();
  const v = new DataView(blob.buffer, blob.byteOffset, blob.byteLength);
  let p = MAGIC.length;
  if (blob.length < p + 16) throw bad();
  const ramSection = { id: v.getUint32(p), instance: v.getUint32(p + 4), version: v.getUint32(p + 8) };
  p += 12;
  const prologueLength = v.getUint32(p);
  if (blob.length < p + 4 + prologueLength + 4) throw bad();
  const prologue = blob.slice(p + 4, p + 4 + prologueLength);
  p += 4 + prologueLength;
  const tailLength = v.getUint32(p);
  if (blob.length !== p + 4 + tailLength) throw bad();
  const tail = blob.slice(p + 4);
  return { prologue, ramSection, blocks: blocks.map((b) => ({ ...b })), tail };
}
