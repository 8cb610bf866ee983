// The VM description QEMU appends after the stream's EOF (QEMU_VM_VMDESCRIPTION): JSON with the
// size of every field QEMU wrote for every device section. Device sections carry no length of
// their own, so this is how their ends are found (as QEMU's scripts/analyze-migration.py does).
// Everything in it is a claim: types and bounds are checked, lengths are summed with a limit,
// and the subsection markers it predicts are checked against the stream's bytes.
import { MigrationError } from "../core/errors.js";
import { QEMU_PAGE_SIZE, Section } from "./constants.js";

/** Where a subsection marker must be, relative to the start of its section's data. */
export interface SubsectionMark {
  at: number;
  name: string;
  /** Bytes of the name on the wire. */
  nameLength: number;
  version: number;
}

/** One device section as the description says it was written. */
export interface DeviceLayout {
  name: string;
  instanceId: number;
  version: number;
  /** Bytes of the section's data (fields and subsections), between its header and footer. */
  dataLength: number;
  marks: SubsectionMark[];
}

export interface VmDescription {
  pageSize: number;
  devices: DeviceLayout[];
}

/** Subsections nest; QEMU's go 2 or 3 deep. Deeper is a hostile description. */
const MAX_DEPTH = 32;

const encoder = new TextEncoder();

function bad(message: string, byteOffset: number | undefined): MigrationError {
  return new MigrationError("EBADMSG", `VM description: ${message}`, byteOffset === undefined ? {} : { byteOffset });
}

function isCount(value: unknown): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
}

/**
 * Parses and checks the description. `maxDataBytes` bounds the sum of every device's data (the
 * bytes a reader would have to wait for on the description's word); `at` is the JSON's offset
 * in the stream, for errors.
 */
export function parseVmDescription(json: Uint8Array, maxDataBytes: number, at?: number): VmDescription {
  let doc: unknown;
  try {
    doc = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(json));
  } catch (cause) {
    throw new MigrationError("EBADMSG", `VM description is not JSON: ${(cause as Error).message}`, { ...(at === undefined ? {} : { byteOffset: at }), cause });
  }
  if (typeof doc !== "object" || doc === null || Array.isArray(doc)) throw bad("not a JSON object", at);
  const { page_size: pageSize, devices } = doc as { page_size?: unknown; devices?: unknown };
  if (pageSize !== QEMU_PAGE_SIZE)
    throw new MigrationError("EPROTONOSUPPORT", `VM description: page size ${String(pageSize)} (only ${QEMU_PAGE_SIZE}, x86, is read)`);
  if (!Array.isArray(devices)) throw bad("no devices array", at);
  let budget = maxDataBytes;
  const layouts: DeviceLayout[] = [];
  for (const [index, device] of devices.entries()) {
    if (typeof device !== "object" || device === null) throw bad(`device ${index} is not an object`, at);
    const { name, instance_id: instanceId, version } = device as { name?: unknown; instance_id?: unknown; version?: unknown };
    if (typeof name !== "string" || !isCount(instanceId) || instanceId > 0xffffffff || !isCount(version) || version > 0xffffffff) {
      throw bad(`device ${index} lacks a name, instance_id or version`, at);
    }
    const marks: SubsectionMark[] = [];
    const dataLength = walk(device, 0, marks, 0, budget, `device ${index} (${name})`, at);
    budget -= dataLength;
    layouts.push({ name, instanceId, version, dataLength, marks });
  }
  return { pageSize, devices: layouts };
}

/** Bytes of a vmstate description's data from `start`, recording where its subsections begin. */
function walk(desc: object, start: number, marks: SubsectionMark[], depth: number, budget: number, where: string, at: number | undefined): number {
  if (depth > MAX_DEPTH) throw bad(`${where}: subsections nested deeper than ${MAX_DEPTH}`, at);
  const { fields, subsections } = desc as { fields?: unknown; subsections?: unknown };
  if (!Array.isArray(fields)) throw bad(`${where} has no fields array`, at);
  let length = 0;
  const over = (): MigrationError =>
    new MigrationError(
      "E2BIG",
      `VM description: ${where} claims more device data than the limit of ${budget} bytes`,
      at === undefined ? {} : { byteOffset: at },
    );
  for (const field of fields) {
    const { size, array_len: arrayLen } = (field ?? {}) as { size?: unknown; array_len?: unknown };
    if (!isCount(size) || (arrayLen !== undefined && !isCount(arrayLen))) throw bad(`${where}: a field without a valid size`, at);
    const bytes = size * (arrayLen ?? 1);
    if (!Number.isSafeInteger(bytes) || length + bytes > budget) throw over();
    length += bytes;
  }
  if (subsections === undefined) return length;
  if (!Array.isArray(subsections)) throw bad(`${where}: subsections is not an array`, at);
  for (const sub of subsections) {
    const { vmsd_name: name, version } = (sub ?? {}) as { vmsd_name?: unknown; version?: unknown };
    if (typeof name !== "string" || !isCount(version) || version > 0xffffffff) throw bad(`${where}: a subsection without vmsd_name or version`, at);
    const nameBytes = encoder.encode(name).length;
    if (nameBytes > 255) throw bad(`${where}: subsection name longer than 255 bytes`, at);
    marks.push({ at: start + length, name, nameLength: nameBytes, version });
    length += 2 + nameBytes + 4;
    if (length > budget) throw over();
    length += walk(sub as object, start + length, marks, depth + 1, budget - length, `${where}/${name}`, at);
  }
  return length;
}

/**
 * Finds the VM description at the end of `tail` (the last bytes of a whole stream): EOF, then
 * VMDESCRIPTION, a u32 length and exactly that many bytes of JSON up to the end. Returns the
 * offset of the EOF byte in `tail`, or -1.
 */
export function findDescription(tail: Uint8Array): number {
  const n = tail.length;
  const view = new DataView(tail.buffer, tail.byteOffset, tail.byteLength);
  // The JSON is text, with no NUL in it: the EOF byte is the last NUL or one of the (at most
  // four) NULs of the length field just after it, so only five places can hold it.
  const last = tail.lastIndexOf(Section.EOF);
  for (let p = last; p >= 0 && p >= last - 5; p--) {
    if (tail[p] !== Section.EOF || n - p < 7) continue;
    if (tail[p + 1] === Section.VMDESCRIPTION && view.getUint32(p + 2) === n - p - 6 && tail[p + 6] === 0x7b) return p;
  }
  return -1;
}
