// Compression through the migration APIs: saving sessions of a device made with `compress`, and
// migrateOut's option, stream 1.1 with LZ4 records, resumed into a device byte for byte.
import { describe, expect, it } from "vitest";
import { decodeSnapshot } from "../../src/codec/snapshot.js";
import { migrateIn, migrateOut } from "../../src/migration/precopy.js";
import { MigrationDevice } from "../../src/migration/v2/migration-device.js";
import { concat, expectSameBytes, fillCompressible, makeDevice, PAGE, TRACKINGS } from "./helpers.js";

/** Stream tags after the header (a light walk: header length at byte 12, records of 32 + P). */
function tags(stream: Uint8Array): number[] {
  const view = new DataView(stream.buffer, stream.byteOffset, stream.length);
  const out: number[] = [];
  for (let at = view.getUint32(12, true); at < stream.length; at += 32 + view.getUint32(at + 4, true)) out.push(stream[at]!);
  return out;
}

describe("compress: lz4 in migrations", () => {
  it.each(TRACKINGS)("%s: migrateOut with compress lz4 writes a 1.1 stream that resumes exactly", async (tracking) => {
    const device = makeDevice({ tracking });
    fillCompressible(device, 3);
    const chunks: Uint8Array[] = [];
    const big = device.model.layout.reduce((a, b) => (b.size > a.size ? b : a));
    let writes = 0;
    const report = await migrateOut(device, {
      compress: "lz4",
      send: (chunk) => {
        chunks.push(chunk);
        // Dirty a page per chunk while pre-copy runs, so later rounds carry deltas too.
        if (device.running && writes++ < 3) device.write(big.name, PAGE, Uint8Array.of(writes));
      },
    });
    const stream = concat(chunks);
    expect(stream[10]).toBe(1); // minor 1
    expect(tags(stream)).toContain(0x04);
    const plain = makeDevice({ tracking });
    fillCompressible(plain, 3);
    const uncompressed = concat(await collect(plain));
    expect(report.bytes).toBeLessThan(uncompressed.length);
    const target = new MigrationDevice({ regions: device.model.layout, tracking });
    await migrateIn(target, [stream]);
    expectSameBytes(target.model.snapshot(), device.model.snapshot());
    target.free();
    device.free();
    plain.free();
  });

  it("a device made with compress lz4 saves compressed streams; the default stays 1.0", async () => {
    const device = makeDevice({ compress: "lz4", features: { p2p: true, precopy: false } });
    fillCompressible(device, 9);
    const stream = concat(await collect(device));
    expect(stream[10]).toBe(1);
    expectSameBytes(decodeSnapshot(stream), device.model.snapshot());
    const plain = makeDevice({ features: { p2p: true, precopy: false } });
    fillCompressible(plain, 9);
    const old = concat(await collect(plain));
    expect(old[10]).toBe(0);
    expect(tags(old)).not.toContain(0x04);
    expect(stream.length).toBeLessThan(old.length / 2);
    device.free();
    plain.free();
  });
});

async function collect(device: MigrationDevice): Promise<Uint8Array[]> {
  const chunks: Uint8Array[] = [];
  await migrateOut(device, { send: (c) => void chunks.push(c) });
  return chunks;
}
