// The message framing and the PCI config space of the vfio-user server, as units: any
// segmentation gives the same messages; sizes are checked before allocation; BAR sizing.
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { MessageReader } from "../../../src/node/vfio-user/framing.js";
import { barSize, PciConfigSpace } from "../../../src/node/vfio-user/pci.js";
import { readHeader, writeHeader } from "../../../src/node/vfio-user/protocol.js";
import { encodeMessage } from "./client.js";

function collect(limit: number): { reader: MessageReader; got: { id: number; cmd: number; body: number[] }[]; violations: string[] } {
  const got: { id: number; cmd: number; body: number[] }[] = [];
  const violations: string[] = [];
  const reader = new MessageReader(limit, {
    message: (h, p) => got.push({ id: h.msgId, cmd: h.command, body: [...p] }),
    violation: (_h, errno) => violations.push(errno),
  });
  return { reader, got, violations };
}

describe("vfio-user header", () => {
  it("golden bytes: id, command, size, flags, error little-endian", () => {
    const bytes = new Uint8Array(16);
    writeHeader(bytes, { msgId: 0x1234, command: 17, size: 0x18, flags: 0x21, error: 22 });
    expect([...bytes]).toEqual([0x34, 0x12, 17, 0, 0x18, 0, 0, 0, 0x21, 0, 0, 0, 22, 0, 0, 0]);
    expect(readHeader(bytes)).toEqual({ msgId: 0x1234, command: 17, size: 0x18, flags: 0x21, error: 22 });
  });
});

describe("MessageReader", () => {
  it("any segmentation of a run of messages gives the same messages", () => {
    fc.assert(
      fc.property(
        fc.array(fc.record({ cmd: fc.integer({ min: 1, max: 20 }), body: fc.uint8Array({ maxLength: 300 }) }), { minLength: 1, maxLength: 8 }),
        fc.array(fc.integer({ min: 1, max: 64 }), { minLength: 1, maxLength: 40 }),
        (messages, cuts) => {
          const stream = Buffer.concat(messages.map((m, i) => encodeMessage(i, m.cmd, m.body)));
          const { reader, got, violations } = collect(1024);
          let at = 0;
          for (let i = 0; at < stream.length; i++) {
            const step = cuts[i % cuts.length]!;
            reader.push(stream.subarray(at, at + step));
            at += step;
          }
          expect(violations).toEqual([]);
          expect(reader.partial).toBe(false);
          expect(got).toEqual(messages.map((m, i) => ({ id: i, cmd: m.cmd, body: [...m.body] })));
        },
      ),
      { seed: 2107, numRuns: 200 },
    );
  });

  it("several messages in one read, a message split inside its header", () => {
    const stream = Buffer.concat([encodeMessage(1, 4, Buffer.alloc(16)), encodeMessage(2, 13, Buffer.alloc(0)), encodeMessage(3, 9, Buffer.from([1, 2, 3]))]);
    const { reader, got } = collect(1024);
    // 32 + 16 + 19 bytes: the cut at 40 falls inside the second message's header.
    reader.push(stream.subarray(0, 40));
    expect(got.map((m) => m.id)).toEqual([1]);
    expect(reader.partial).toBe(true);
    reader.push(stream.subarray(40));
    expect(got.map((m) => m.id)).toEqual([1, 2, 3]);
    expect(got[2]!.body).toEqual([1, 2, 3]);
  });

  it("a size below the header is EINVAL, a size past the limit E2BIG, before any body byte is taken", () => {
    const small = encodeMessage(1, 1, Buffer.alloc(0));
    small.writeUInt32LE(8, 4);
    const a = collect(1024);
    a.reader.push(small);
    expect(a.violations).toEqual(["EINVAL"]);
    const big = encodeMessage(1, 1, Buffer.alloc(0));
    big.writeUInt32LE(0xffffffff, 4);
    const b = collect(1024);
    b.reader.push(big);
    expect(b.violations).toEqual(["E2BIG"]);
    // Nothing more is framed after a violation.
    b.reader.push(encodeMessage(2, 1, Buffer.alloc(0)));
    expect(b.got).toEqual([]);
  });
});

describe("PCI config space", () => {
  it("BAR sizes are powers of two, at least a page", () => {
    expect([1, 4096, 4097, 65536, 100_000, 256 << 20].map(barSize)).toEqual([4096, 4096, 8192, 65536, 131072, 256 << 20]);
  });

  it("writing all ones to a BAR reads back its size mask; unused BARs stay zero", () => {
    const config = new PciConfigSpace([65536, 3000]);
    config.write(0x10, Buffer.from([0xff, 0xff, 0xff, 0xff]));
    config.write(0x14, Buffer.from([0xff, 0xff, 0xff, 0xff]));
    config.write(0x18, Buffer.from([0xff, 0xff, 0xff, 0xff]));
    const view = Buffer.from(config.bytes);
    expect(view.readUInt32LE(0x10)).toBe(0xffff0000);
    expect(view.readUInt32LE(0x14)).toBe(0xfffff000);
    expect(view.readUInt32LE(0x18)).toBe(0);
    config.write(0x10, Buffer.from([0x34, 0x12, 0x00, 0xe0]));
    expect(Buffer.from(config.bytes).readUInt32LE(0x10)).toBe(0xe0000000);
  });

  it("the command register takes its writable bits; ids are read-only; reset restores", () => {
    const config = new PciConfigSpace([4096], { vendorId: 0xabcd, deviceId: 0x0042, classCode: 0x058000 });
    config.write(0, Buffer.from([0, 0, 0, 0, 0xff, 0xff]));
    const view = Buffer.from(config.bytes);
    expect(view.readUInt16LE(0)).toBe(0xabcd);
    expect(view.readUInt16LE(2)).toBe(0x0042);
    expect(view.readUInt16LE(4)).toBe(0x0547);
    expect([view[0x09], view[0x0a], view[0x0b]]).toEqual([0x00, 0x80, 0x05]);
    config.reset();
    expect(Buffer.from(config.bytes).readUInt16LE(4)).toBe(0);
  });
});
