// The QEMU stream reader on golden streams QEMU 7.2 wrote (test/fixtures/qemu/, with the guest
// memory QEMU itself loaded from them) and on hand-made hostile streams.
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { fc, test as fcTest } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import { MigrationError } from "../../src/core/errors.js";
import { type QemuReaderOptions, QemuStreamReader } from "../../src/qemu/reader.js";
import { patternBytes } from "./driver.js";
import {
  be32,
  be64,
  capabilities,
  cat,
  configuration,
  DELTA,
  device,
  ending,
  header,
  normalPage,
  PAGE_B,
  ramPart,
  ramStart,
  SMALL_BLOCKS,
  SMALL_DEVICES,
  sectionStart,
  smallStream,
  u8,
  xbzrlePage,
  zeroPage,
} from "./stream-builder.js";

const FIXTURES = new URL("../fixtures/qemu/", import.meta.url);
const fixture = (name: string): Uint8Array => new Uint8Array(readFileSync(new URL(name, FIXTURES)));
const loaded = JSON.parse(readFileSync(new URL("loaded.json", FIXTURES), "utf8")) as Record<string, { low: string; high: string }>;
const sha256 = (bytes: Uint8Array): string => createHash("sha256").update(bytes).digest("hex");

function readAll(data: Uint8Array, options: QemuReaderOptions = { ram: { kind: "memory" } }, slice = data.length): QemuStreamReader {
  const reader = new QemuStreamReader(options);
  for (let at = 0; at < data.length; at += slice) reader.push(data.subarray(at, at + slice));
  reader.end();
  return reader;
}

function failure(data: Uint8Array, options?: QemuReaderOptions): MigrationError {
  try {
    readAll(data, options);
  } catch (error) {
    expect(error).toBeInstanceOf(MigrationError);
    return error as MigrationError;
  }
  throw new Error("the stream was accepted");
}

describe("golden streams from QEMU 7.2", () => {
  it("a paused 16 MiB pc guest: machine, blocks, sections, the loaded blob", () => {
    const reader = readAll(fixture("pc-16m.mig"));
    const s = reader.summary();
    expect(s.machine).toBe("pc-i440fx-7.2");
    expect(s.ended).toBe(true);
    expect(s.ramBlocks.map((b) => b.name)).toEqual(["pc.ram", "/rom@etc/acpi/tables", "pc.bios", "pc.rom", "/rom@etc/table-loader", "/rom@etc/acpi/rsdp"]);
    expect(s.ramBlocks[0]!.size).toBe(16 * 2 ** 20);
    expect(s.pages.xbzrle).toBe(0);
    expect(s.pages.normal + s.pages.zero).toBeGreaterThanOrEqual(s.ramBlocks.reduce((n, b) => n + b.size, 0) / 4096);
    expect(s.sections[0]).toMatchObject({ name: "ram", instance: 0, version: 4 });
    expect(s.sections.length).toBe(31);
    expect(s.sections.reduce((n, x) => n + x.bytes, 0)).toBeLessThan(s.bytes);
    expect(reader.read("pc.ram", 0x100000, 12288)).toEqual(patternBytes(12288, 19));
    reader.release();
  });

  for (const name of ["pc-16m.mig", "xbzrle-16m.mig"]) {
    it(`${name}: pc.ram equals what QEMU loaded from it (pmemsave digests)`, () => {
      const reader = readAll(fixture(name));
      expect(sha256(reader.read("pc.ram", 0, 0xa0000))).toBe(loaded[name]!.low);
      expect(sha256(reader.read("pc.ram", 0x100000, 15 * 2 ** 20))).toBe(loaded[name]!.high);
      reader.release();
    });
  }

  it("the dirtying guest's stream has several iterations and XBZRLE pages", () => {
    const s = readAll(fixture("xbzrle-16m.mig"), {}).summary();
    expect(s.pages.xbzrle).toBeGreaterThan(0);
    expect(s.iterations).toBeGreaterThan(2);
  });

  fcTest.prop([fc.array(fc.integer({ min: 1, max: 70_000 }), { minLength: 1, maxLength: 8 })], { seed: 1919, numRuns: 8 })(
    "any segmentation gives the same summary and memory",
    (sizes) => {
      const data = fixture("xbzrle-16m.mig");
      const whole = readAll(data);
      const reader = new QemuStreamReader({ ram: { kind: "memory" } });
      let at = 0;
      for (let i = 0; at < data.length; i++) {
        const n = sizes[i % sizes.length]!;
        reader.push(data.subarray(at, at + n));
        at += n;
      }
      reader.end();
      expect(reader.summary()).toEqual(whole.summary());
      expect(sha256(reader.read(0))).toBe(sha256(whole.read(0)));
      reader.release();
      whole.release();
    },
  );

  it("the description given up front (a seekable input) reads the same, without buffering", () => {
    const data = fixture("pc-16m.mig");
    const json = data.subarray(data.length - new DataView(data.buffer).getUint32(findJsonLength(data)));
    const reader = readAll(data, { description: json }, 4099);
    expect(reader.summary()).toEqual(readAll(data).summary());
  });
});

/** Offset of the u32 length before the JSON at the end of a stream. */
function findJsonLength(data: Uint8Array): number {
  for (let p = data.length - 7; p >= 0; p--) {
    if (data[p] === 0 && data[p + 1] === 6 && new DataView(data.buffer).getUint32(p + 2) === data.length - p - 6) return p + 2;
  }
  throw new Error("no JSON");
}

describe("a small hand-made stream", () => {
  it("reads: pages, CONTINUE across sections, XBZRLE onto the page as it is", () => {
    const reader = readAll(smallStream());
    const s = reader.summary();
    expect(s.pages).toEqual({ normal: 2, zero: 2, xbzrle: 1 });
    expect(s.iterations).toBe(2);
    expect(s.sections.map((x) => x.name)).toEqual(["ram", "timer", "cpu"]);
    expect(reader.read("pc.ram")).toEqual(new Uint8Array(8192));
    const rsdp = PAGE_B.slice();
    rsdp.fill(0xee, 10, 13);
    expect(reader.read("/rom@etc/acpi/rsdp")).toEqual(rsdp);
  });

  it("truncated at every byte: ENODATA (or EBADMSG), never accepted", () => {
    const data = smallStream();
    for (let n = 0; n < data.length; n++) {
      const reader = new QemuStreamReader();
      let error: unknown;
      try {
        reader.push(data.subarray(0, n));
        reader.end();
      } catch (e) {
        error = e;
      }
      expect(error, `cut at ${n}`).toBeInstanceOf(MigrationError);
      expect(["ENODATA", "EBADMSG"], `cut at ${n}: ${(error as MigrationError).message}`).toContain((error as MigrationError).code);
    }
  });

  it("a byte after the description is refused", () => {
    const data = cat(smallStream(), u8(0));
    // Buffered, the description is no longer at the end; given up front, the extra byte shows.
    expect(failure(data).code).toBe("ENODATA");
    const json = smallStream().subarray(findJsonLength(smallStream()) + 4);
    expect(failure(data, { description: json }).message).toMatch(/after the VM description/);
  });
});

describe("refusals name the feature", () => {
  const ram = (...records: Uint8Array[]) => [ramPart(0x02, 2, ...records)];
  it.each([
    [0x100, "EPROTONOSUPPORT", /zlib/],
    [0x200, "EPROTONOSUPPORT", /multifd/],
    [0x80, "EPROTONOSUPPORT", /RDMA/],
    [0x04, "EBADMSG", /MEM_SIZE/],
    [0x0a, "EBADMSG", /unknown flags 0xa/],
    [0x400, "EBADMSG", /unknown flags/],
  ])("RAM flags 0x%s", (flags, code, message) => {
    const e = failure(smallStream({ ram: ram(cat(be64(flags), u8(6), new TextEncoder().encode("pc.ram"))) }));
    expect(e.code).toBe(code);
    expect(e.message).toMatch(message);
    expect(e.byteOffset).toBeGreaterThan(0);
  });

  it("x-ignore-shared and mapped-ram in the configuration", () => {
    for (const cap of ["x-ignore-shared", "mapped-ram"]) {
      const data = cat(header(), configuration("pc-i440fx-7.2", capabilities(cap)), ramStart(2, SMALL_BLOCKS));
      const e = failure(data);
      expect(e.code).toBe("EPROTONOSUPPORT");
      expect(e.message).toContain(cap);
    }
  });

  it("postcopy commands and other iterable sections", () => {
    const postcopy = failure(cat(header(), configuration(), u8(0x08), u8(0, 3), u8(0, 16)));
    expect(postcopy.code).toBe("EPROTONOSUPPORT");
    expect(postcopy.message).toMatch(/postcopy/);
    const block = failure(cat(header(), configuration(), sectionStart(0x01, 1, "block", 0, 1)));
    expect(block.code).toBe("EPROTONOSUPPORT");
    expect(block.message).toMatch(/block migration/);
  });

  it("another file version, another RAM section version, a bad magic", () => {
    expect(failure(cat(be32(0x5145564d), be32(2))).code).toBe("EPROTONOSUPPORT");
    expect(failure(cat(header(), configuration(), sectionStart(0x01, 2, "ram", 0, 3))).code).toBe("EPROTONOSUPPORT");
    expect(failure(cat(be32(0x5145564e), be32(3))).code).toBe("EBADMSG");
  });
});

describe("hostile streams: typed errors, limits before allocation", () => {
  const blocks = (...list: Uint8Array[]) => cat(header(), configuration(), sectionStart(0x01, 2, "ram", 0, 4), ...list);

  it("an absurd total RAM is refused before anything is allocated", () => {
    const e = failure(blocks(be64((1n << 60n) | 4n)));
    expect(e.code).toBe("E2BIG");
    // Header 8, configuration 18, START of \"ram\" 17: the MEM_SIZE word.
    expect(e.byteOffset).toBe(43);
  });

  it("block sizes that do not add up, are not whole pages, or repeat", () => {
    const name = (s: string) => cat(u8(s.length), new TextEncoder().encode(s));
    expect(failure(blocks(be64(8192n | 4n), name("a"), be64(16384))).code).toBe("EBADMSG");
    expect(failure(blocks(be64(8192n | 4n), name("a"), be64(100))).code).toBe("EBADMSG");
    expect(failure(blocks(be64(8192n | 4n), name("a"), be64(4096), name("a"), be64(4096))).code).toBe("EBADMSG");
  });

  it("a huge claimed block costs nothing until pages arrive", () => {
    // 32 GiB claimed, one page sent: the memory image holds one chunk.
    const big = [{ name: "pc.ram", size: 32 * 2 ** 30 }];
    const devices = SMALL_DEVICES.map((d, i) => device(3 + i, d));
    const data = cat(
      header(),
      configuration(),
      ramStart(2, big),
      ramPart(0x03, 2, normalPage(2 ** 34, PAGE_B, "pc.ram")),
      ...devices.map((d) => d.bytes),
      ending({ page_size: 4096, devices: devices.map((d) => d.json) }),
    );
    const reader = readAll(data);
    expect(reader.read(0, 2 ** 34, 4096)).toEqual(PAGE_B);
    expect(reader.summary().pages.normal).toBe(1);
  });

  it("records: unknown block, CONTINUE first, offset past the block, bad XBZRLE", () => {
    const part = (...r: Uint8Array[]) => smallStream({ ram: [ramPart(0x02, 2, ...r)] });
    expect(failure(part(zeroPage(0, "nope"))).message).toMatch(/does not declare/);
    expect(failure(part(zeroPage(0))).message).toMatch(/no block came before/);
    expect(failure(part(zeroPage(8192, "pc.ram"))).message).toMatch(/past the end/);
    expect(failure(part(cat(be64(0x40), u8(6), new TextEncoder().encode("pc.ram"), u8(2), be32(0)))).message).toMatch(/encoding 0x2/);
    expect(failure(part(xbzrlePage(0, u8(10, 0), "pc.ram"))).message).toMatch(/malformed XBZRLE/);
    expect(failure(part(xbzrlePage(0, new Uint8Array(4097), "pc.ram"))).message).toMatch(/longer than a page/);
    expect(failure(part(xbzrlePage(4000, DELTA, "pc.ram"))).code).toBe("EBADMSG");
  });

  it("flipped lengths and flags in the golden stream: typed errors only", () => {
    const data = fixture("pc-16m.mig");
    for (let at = 0; at < 4096; at += 37) {
      for (const flip of [0x01, 0x80, 0xff]) {
        const bad = data.slice();
        bad[at]! ^= flip;
        try {
          readAll(bad, {});
        } catch (error) {
          expect(error, `flip 0x${flip.toString(16)} at ${at}`).toBeInstanceOf(MigrationError);
        }
      }
    }
  });

  it("a description that disagrees with the sections", () => {
    const [timer, cpu] = SMALL_DEVICES as [(typeof SMALL_DEVICES)[0], (typeof SMALL_DEVICES)[0]];
    const json = (d: typeof SMALL_DEVICES) => ({ page_size: 4096, devices: d.map((x, i) => device(3 + i, x).json) });
    const wrong = [
      json([{ ...timer, fields: [8, 8, 9] }, cpu]),
      json([{ ...timer, name: "other" }, cpu]),
      json([timer, { ...cpu, subsections: [{ name: "cpu/other", version: 1, fields: [8] }] }]),
      json([timer, { ...cpu, subsections: [] }]),
      json([timer]),
      json([timer, cpu, timer]),
    ];
    for (const description of wrong) {
      const e = failure(smallStream({ description }));
      expect(e.code, e.message).toBe("EBADMSG");
    }
  });

  it("absurd descriptions: not JSON, wrong shape, huge sizes, deep nesting, another page size", () => {
    const nest = (depth: number): Record<string, unknown> => ({ vmsd_name: "s", version: 1, fields: [], subsections: depth > 0 ? [nest(depth - 1)] : [] });
    const cases: Array<[unknown, string]> = [
      ["{not json", "EBADMSG"],
      [{ page_size: 4096, devices: {} }, "EBADMSG"],
      [{ page_size: 4096 }, "EBADMSG"],
      [{ page_size: 65536, devices: [] }, "EPROTONOSUPPORT"],
      [{ page_size: 4096, devices: [{ name: "timer", instance_id: 0, version: 2, fields: [{ size: 1e15 }] }] }, "E2BIG"],
      [{ page_size: 4096, devices: [{ name: "timer", instance_id: 0, version: 2, fields: [{ size: 8, array_len: 2 ** 52 }] }] }, "E2BIG"],
      [{ page_size: 4096, devices: [{ name: "timer", instance_id: 0, version: 2, fields: [{ size: -1 }] }] }, "EBADMSG"],
      [{ page_size: 4096, devices: [{ name: "timer", instance_id: 0, version: 2, fields: [], subsections: [nest(100)] }] }, "EBADMSG"],
    ];
    for (const [description, code] of cases) {
      const e = failure(smallStream({ description }));
      expect(e.code, `${JSON.stringify(description).slice(0, 80)}: ${e.message}`).toBe(code);
    }
  });

  it("the device part is buffered up to its limit only", () => {
    const e = failure(smallStream(), { maxDeviceBytes: 16, maxDescriptionBytes: 16 });
    expect(e.code).toBe("E2BIG");
  });

  it("a stream without its VM description is incomplete", () => {
    const devices = SMALL_DEVICES.map((d, i) => device(3 + i, d));
    const data = cat(header(), configuration(), ramStart(2, SMALL_BLOCKS), ...devices.map((d) => d.bytes), u8(0));
    expect(failure(data).code).toBe("ENODATA");
  });
});
