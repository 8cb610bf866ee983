// The QEMU stream writer: golden bytes against the hand-made stream builder (the layout QEMU
// 7.2 loads, checked against QEMU itself in qemu.e2e.test.ts), and its refusals.
import { describe, expect, it } from "vitest";
import { MigrationError } from "../../src/core/errors.js";
import { QemuStreamReader } from "../../src/qemu/reader.js";
import { QemuStreamWriter } from "../../src/qemu/writer.js";
import {
  cat,
  configuration,
  device,
  ending,
  header,
  normalPage,
  PAGE_A,
  PAGE_B,
  ramPart,
  ramStart,
  SMALL_BLOCKS,
  SMALL_DEVICES,
  zeroPage,
} from "./stream-builder.js";

const devices = SMALL_DEVICES.map((d, i) => device(3 + i, d));
const tail = cat(...devices.map((d) => d.bytes), ending({ page_size: 4096, devices: devices.map((d) => d.json) }));
const state = { prologue: cat(header(), configuration()), ramSection: { id: 2, instance: 0, version: 4 }, blocks: SMALL_BLOCKS, tail };

function write(ram: Uint8Array[], s = state): Uint8Array {
  const parts: Uint8Array[] = [];
  const writer = new QemuStreamWriter(s, (view) => parts.push(view.slice()));
  for (const r of ram) writer.write(r);
  writer.end();
  return cat(...parts);
}

describe("QemuStreamWriter", () => {
  it("golden bytes: START with the block list, one PART with every page (ZERO or PAGE, CONTINUE within a block), END, the tail", () => {
    const ram = cat(PAGE_A, new Uint8Array(4096), PAGE_B);
    const expected = cat(
      state.prologue,
      ramStart(2, SMALL_BLOCKS),
      ramPart(0x02, 2, normalPage(0, PAGE_A, "pc.ram"), zeroPage(4096), normalPage(0, PAGE_B, "/rom@etc/acpi/rsdp")),
      ramPart(0x03, 2),
      tail,
    );
    expect(Buffer.from(write([ram])).equals(Buffer.from(expected))).toBe(true);
    // Any split of the RAM gives the same stream.
    expect(Buffer.from(write([ram.subarray(0, 4096), ram.subarray(4096, 8192), ram.subarray(8192)])).equals(Buffer.from(expected))).toBe(true);
  });

  it("what it writes reads back with the same RAM and device sections", () => {
    const ram = cat(PAGE_B, PAGE_A, new Uint8Array(4096));
    const reader = new QemuStreamReader({ ram: { kind: "memory" } });
    reader.push(write([ram]));
    const summary = reader.end();
    expect(summary.sections.map((s) => s.name)).toEqual(["ram", "timer", "cpu"]);
    expect(cat(reader.read(0), reader.read(1))).toEqual(ram);
    expect(reader.deviceState().tail).toEqual(tail);
  });

  it("refuses: RAM not in whole pages, more RAM than the blocks, ending early, a prologue or tail that is not QEMU's", () => {
    const code = (fn: () => unknown): string => {
      try {
        fn();
      } catch (error) {
        expect(error).toBeInstanceOf(MigrationError);
        return (error as MigrationError).code;
      }
      return "accepted";
    };
    expect(code(() => write([new Uint8Array(100)]))).toBe("EINVAL");
    expect(code(() => write([new Uint8Array(4 * 4096)]))).toBe("EINVAL");
    expect(code(() => write([new Uint8Array(4096)]))).toBe("EINVAL");
    expect(code(() => new QemuStreamWriter({ ...state, prologue: new Uint8Array(8) }, () => undefined))).toBe("EINVAL");
    expect(code(() => new QemuStreamWriter({ ...state, tail: Uint8Array.of(0x7e) }, () => undefined))).toBe("EINVAL");
    expect(code(() => new QemuStreamWriter({ ...state, blocks: [{ name: "pc.ram", size: 100 }] }, () => undefined))).toBe("EINVAL");
  });
});
