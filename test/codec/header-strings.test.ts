// Header strings are bytes: a leading UTF-8 BOM is part of a name or device id, never stripped;
// and a stream that ends right after its header says so.
import { describe, expect, test } from "vitest";
import { createDecoder, decodeSnapshot, encodeSnapshot } from "../../src/codec/snapshot.js";
import { StreamBuilder } from "./stream-builder.js";

const BOM = "\u{feff}";

describe("a leading BOM is kept", () => {
  test("in the device id: BOM+nic is not nic", () => {
    const stream = encodeSnapshot(new Uint8Array(64), { pageSize: 64, deviceId: `${BOM}nic` });
    expect(() => decodeSnapshot(stream, { deviceId: "nic" })).toThrow(expect.objectContaining({ code: "ENODEV" }));
    const decoder = createDecoder({ deviceId: `${BOM}nic` });
    decoder.push(stream, true);
    expect(decoder.header!.deviceId).toBe(`${BOM}nic`);
    expect([...new TextEncoder().encode(decoder.header!.deviceId).subarray(0, 3)]).toEqual([0xef, 0xbb, 0xbf]);
  });

  test("in region names: a and BOM+a are two regions", () => {
    const regions = [
      { name: "a", size: 64 },
      { name: `${BOM}a`, size: 64 },
    ];
    const stream = encodeSnapshot(new Uint8Array(128).fill(5), { pageSize: 64, regions });
    const decoder = createDecoder({ regions });
    decoder.push(stream, true);
    expect(decoder.header!.regions.map((r) => r.name)).toEqual(["a", `${BOM}a`]);
    expect(() =>
      decodeSnapshot(stream, {
        regions: [
          { name: "a", size: 64 },
          { name: "a2", size: 64 },
        ],
      }),
    ).toThrow(expect.objectContaining({ code: "ENODEV" }));
  });
});

test("a stream that ends right after its header is reported as such", () => {
  const b = new StreamBuilder({ regions: [{ name: "s", size: 256 }], pageSize: 64 });
  let error: unknown;
  try {
    decodeSnapshot(b.bytes());
  } catch (e) {
    error = e;
  }
  expect(error).toMatchObject({ code: "ENODATA", recordIndex: 0, byteOffset: b.header.length });
  expect(String((error as Error).message)).toContain("right after its header");
  expect(String((error as Error).message)).not.toContain("-1");
});
