// Migration over vfio-user, driven by the spec-based test client: a device migrated between
// two servers (pre-copy until no more for now, stop-copy to the end, resume, compare the BARs
// through REGION_READ), streams that do not validate, migration data in the wrong state, and
// DMA logging over the wire with a device that writes guest memory by DMA.
import { afterEach, describe, expect, it } from "vitest";
import { MigrationDevice } from "../../../src/migration/v2/migration-device.js";
import { FEATURE, ReplyError, STATE, TestClient } from "./client.js";
import { type Served, serve } from "./helpers.js";

const REGIONS = [
  { name: "regs", size: 4096 },
  { name: "memory", size: 300_000 },
];

const servers: Served[] = [];
const clients: TestClient[] = [];
afterEach(async () => {
  for (const c of clients.splice(0)) await c.close();
  for (const s of servers.splice(0)) await s.close();
});

async function device(options: Parameters<typeof serve>[1] = {}): Promise<{ device: MigrationDevice; client: TestClient; served: Served }> {
  const d = new MigrationDevice({ regions: REGIONS, deviceId: "vfu-test" });
  const served = await serve(d, options);
  servers.push(served);
  const client = await TestClient.connect(served.path);
  clients.push(client);
  await client.version();
  return { device: d, client, served };
}

function pattern(length: number, seed: number): Buffer {
  const out = Buffer.alloc(length);
  let x = seed;
  for (let i = 0; i < length; i += 4) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    out.writeUInt32LE(x, i - (i + 4 > length ? i + 4 - length : 0));
  }
  return out;
}

/** The BARs of a device as the client sees them, through REGION_READ. */
async function readBars(client: TestClient): Promise<Buffer[]> {
  const out: Buffer[] = [];
  for (const [i, r] of REGIONS.entries()) {
    const parts: Buffer[] = [];
    for (let at = 0; at < r.size; at += 65536) parts.push(await client.regionRead(i, at, Math.min(65536, r.size - at)));
    out.push(Buffer.concat(parts));
  }
  return out;
}

async function writeBar(client: TestClient, region: number, bytes: Buffer): Promise<void> {
  for (let at = 0; at < bytes.length; at += 65536) await client.regionWrite(region, at, bytes.subarray(at, at + 65536));
}

async function errnoOf(promise: Promise<unknown>): Promise<string> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(error instanceof ReplyError)) throw new Error(`expected an error reply, got ${String(error)}`);
  return error.code;
}

/** Reads in PRE_COPY until the server has no more for now: a short read or ENOMSG. */
async function readForNow(client: TestClient, chunks: Buffer[], size: number): Promise<"short" | "ENOMSG"> {
  for (;;) {
    let chunk: Buffer;
    try {
      chunk = await client.migRead(size);
    } catch (error) {
      if (error instanceof ReplyError && error.code === "ENOMSG") return "ENOMSG";
      throw error;
    }
    chunks.push(Buffer.from(chunk));
    if (chunk.length < size) return "short";
  }
}

async function readToEnd(client: TestClient, chunks: Buffer[], size: number): Promise<void> {
  for (;;) {
    const chunk = await client.migRead(size);
    chunks.push(Buffer.from(chunk));
    if (chunk.length < size) return;
  }
}

describe("vfio-user migration between two servers", () => {
  it("pre-copy, stop-copy, resume: the BARs read back identical", async () => {
    const source = await device();
    const target = await device();
    const c = source.client;
    // The guest's view: both BARs written through REGION_WRITE.
    await writeBar(c, 0, pattern(4096, 1));
    await writeBar(c, 1, pattern(300_000, 2));
    expect((await c.feature(FEATURE.PROBE | FEATURE.GET | FEATURE.MIGRATION)).length).toBe(0);
    expect((await c.feature(FEATURE.GET | FEATURE.MIGRATION, new Uint8Array(0), 16)).readBigUInt64LE(0)).toBe(7n); // STOP_COPY | P2P | PRE_COPY
    expect(await c.getState()).toBe(STATE.RUNNING);
    const estimate = (await c.feature(FEATURE.GET | FEATURE.MIG_DATA_SIZE, new Uint8Array(0), 16)).readBigUInt64LE(0);
    expect(estimate).toBeGreaterThan(300_000n);

    await c.setState(STATE.PRE_COPY);
    expect(await c.getState()).toBe(STATE.PRE_COPY);
    const stream: Buffer[] = [];
    const first = await readForNow(c, stream, 65536);
    // Nothing left: the next read says so with the kernel's ENOMSG.
    if (first === "short") expect(await errnoOf(c.migRead(65536))).toBe("ENOMSG");
    // The device runs on: the guest writes more, and a round carries it.
    await c.regionWrite(1, 123_456, Buffer.from("written during pre-copy"));
    await readForNow(c, stream, 65536);
    await c.setState(STATE.STOP_COPY);
    await readToEnd(c, stream, 65536);
    expect((await c.migRead(65536)).length).toBe(0); // the end stays the end
    await c.setState(STATE.STOP);
    expect(await errnoOf(c.migRead(16))).toBe("EINVAL"); // no session any more

    const t = target.client;
    await t.setState(STATE.RESUMING);
    expect(await t.getState()).toBe(STATE.RESUMING);
    // Another segmentation on the way in.
    const bytes = Buffer.concat(stream);
    for (let at = 0; at < bytes.length; at += 50_000) await t.migWrite(bytes.subarray(at, at + 50_000));
    await t.setState(STATE.STOP);
    await t.setState(STATE.RUNNING);
    expect(await t.getState()).toBe(STATE.RUNNING);
    const [want, got] = [await readBars(c), await readBars(t)];
    expect(got[0]!.equals(want[0]!)).toBe(true);
    expect(got[1]!.equals(want[1]!)).toBe(true);
    expect(got[1]!.subarray(123_456, 123_456 + 23).toString()).toBe("written during pre-copy");
  });

  it("a stream that does not validate: leaving RESUMING fails, the device keeps its content and needs a reset", async () => {
    const source = await device();
    await writeBar(source.client, 1, pattern(300_000, 3));
    await source.client.setState(STATE.STOP_COPY);
    const stream: Buffer[] = [];
    await readToEnd(source.client, stream, 1 << 20);
    const bytes = Buffer.concat(stream);

    const target = await device();
    await writeBar(target.client, 1, pattern(300_000, 4));
    const before = await readBars(target.client);
    await target.client.setState(STATE.RESUMING);
    // Cut short: every byte it sends is fine, but the end never comes.
    await target.client.migWrite(bytes.subarray(0, bytes.length - 100));
    expect(await errnoOf(target.client.setState(STATE.STOP))).toBe("ENODATA");
    expect(await target.client.getState()).toBe(STATE.ERROR);
    const after = await readBars(target.client);
    expect(after[1]!.equals(before[1]!)).toBe(true);
    await target.client.reset();
    expect(await target.client.getState()).toBe(STATE.RUNNING);

    // Corrupt: a flipped byte in a record is refused when it arrives or when RESUMING ends.
    await target.client.setState(STATE.RESUMING);
    const bad = Buffer.from(bytes);
    bad[Math.floor(bad.length / 2)]! ^= 0x40;
    let refused: string | undefined;
    for (let at = 0; at < bad.length && refused === undefined; at += 65536) {
      refused = await target.client.migWrite(bad.subarray(at, at + 65536)).then(
        () => undefined,
        (e: ReplyError) => e.code,
      );
    }
    const leaving = await errnoOf(target.client.setState(STATE.STOP));
    expect(refused ?? leaving).toBe("EBADMSG");
    expect((await readBars(target.client))[1]!.equals(before[1]!)).toBe(true);
  });

  it("migration data in the wrong state: EINVAL, as the kernel answers", async () => {
    const { client } = await device();
    await client.setState(STATE.PRE_COPY);
    expect(await errnoOf(client.migWrite(Buffer.alloc(32)))).toBe("EINVAL");
    await client.setState(STATE.STOP);
    await client.setState(STATE.RESUMING);
    expect(await errnoOf(client.migRead(32))).toBe("EINVAL");
    await client.migWrite(Buffer.alloc(0));
    // STOP_COPY -> PRE_COPY is refused; a state number past the FSM is EINVAL.
    await client.reset();
    await client.setState(STATE.STOP_COPY);
    expect(await errnoOf(client.setState(STATE.PRE_COPY))).toBe("EINVAL");
    expect(await errnoOf(client.setState(9))).toBe("EINVAL");
    // A read past max_data_xfer_size is EINVAL before anything is read.
    expect(await errnoOf(client.migRead(2 << 20))).toBe("EINVAL");
  });

  it("a client that leaves mid-migration: the next one carries on from the same session", async () => {
    const source = await device();
    await writeBar(source.client, 1, pattern(300_000, 5));
    const want = await readBars(source.client);
    await source.client.setState(STATE.STOP_COPY);
    const stream: Buffer[] = [Buffer.from(await source.client.migRead(10_000))];
    await source.client.close();
    const again = await TestClient.connect(source.served.path);
    clients.push(again);
    await again.version();
    expect(await again.getState()).toBe(STATE.STOP_COPY);
    await readToEnd(again, stream, 65536);

    const target = await device();
    await target.client.setState(STATE.RESUMING);
    await target.client.migWrite(Buffer.concat(stream));
    await target.client.setState(STATE.RUNNING);
    expect((await readBars(target.client))[1]!.equals(want[1]!)).toBe(true);
  });
});

describe("DMA logging over vfio-user", () => {
  it("start, the device's DMA writes reported (read and clear), stop", async () => {
    const { client, served } = await device();
    const guest = await client.dmaMap(0x4000_0000, 64 * 4096);
    // PROBE answers for the three features.
    for (const f of [FEATURE.DMA_LOGGING_START | FEATURE.SET, FEATURE.DMA_LOGGING_STOP | FEATURE.SET, FEATURE.DMA_LOGGING_REPORT | FEATURE.GET]) {
      await client.feature(FEATURE.PROBE | f);
    }
    const start = Buffer.alloc(16 + 16);
    start.writeBigUInt64LE(4096n, 0);
    start.writeUInt32LE(1, 8);
    start.writeBigUInt64LE(0x4000_0000n, 16);
    start.writeBigUInt64LE(BigInt(64 * 4096), 24);
    const started = await client.feature(FEATURE.SET | FEATURE.DMA_LOGGING_START, start);
    expect(started.readBigUInt64LE(0)).toBe(4096n);

    // The device writes guest memory: pages 0, 5 and 6 (a write across a page boundary).
    await served.server.dmaWrite(0x4000_0000 + 100, Buffer.from("descriptor"));
    await served.server.dmaWrite(0x4000_0000 + 5 * 4096 + 4000, Buffer.alloc(200, 0xee));
    expect(guest.subarray(100, 110).toString()).toBe("descriptor");
    expect(guest[5 * 4096 + 4000]).toBe(0xee);

    const report = async (): Promise<bigint> => {
      const req = Buffer.alloc(24);
      req.writeBigUInt64LE(0x4000_0000n, 0);
      req.writeBigUInt64LE(BigInt(64 * 4096), 8);
      req.writeBigUInt64LE(4096n, 16);
      const r = await client.feature(FEATURE.GET | FEATURE.DMA_LOGGING_REPORT, req, 8 + 24 + 8);
      expect(r.length).toBe(24 + 8);
      return r.readBigUInt64LE(24);
    };
    expect(await report()).toBe((1n << 0n) | (1n << 5n) | (1n << 6n));
    expect(await report()).toBe(0n); // read and clear
    await served.server.dmaWrite(0x4000_0000 + 63 * 4096, Buffer.alloc(1));
    expect(await report()).toBe(1n << 63n);
    await client.feature(FEATURE.SET | FEATURE.DMA_LOGGING_STOP);
    expect(await errnoOf(report())).toBe("EINVAL");
  });

  it("no ranges logs every window the client mapped; a stopped device does no DMA", async () => {
    const { client, served } = await device();
    await client.dmaMap(0x10000, 0x4000);
    await client.dmaMap(0x20000, 0x4000);
    const start = Buffer.alloc(16);
    start.writeBigUInt64LE(4096n, 0);
    await client.feature(FEATURE.SET | FEATURE.DMA_LOGGING_START, start);
    await served.server.dmaWrite(0x21000, Buffer.alloc(8, 1));
    const req = Buffer.alloc(24);
    req.writeBigUInt64LE(0x20000n, 0);
    req.writeBigUInt64LE(0x4000n, 8);
    req.writeBigUInt64LE(4096n, 16);
    expect((await client.feature(FEATURE.GET | FEATURE.DMA_LOGGING_REPORT, req, 40)).readBigUInt64LE(24)).toBe(2n);
    await client.setState(STATE.STOP);
    await expect(served.server.dmaWrite(0x21000, Buffer.alloc(8))).rejects.toMatchObject({ code: "EINVAL" });
  });

  it("a doorbell: the device's reaction to a REGION_WRITE does DMA before the write is answered, and logging sees it", async () => {
    let served: Served | undefined;
    const ring = 0x8000_0000;
    const { client, served: s } = await device({
      onRegionWrite: async (region, offset, bytes) => {
        if (region !== 0 || offset !== 0 || bytes.length !== 4) return;
        const slot = new DataView(bytes.buffer, bytes.byteOffset, 4).getUint32(0, true);
        const descriptor = Buffer.alloc(16);
        descriptor.writeUInt32LE((0xd0d0_0000 | slot) >>> 0, 0);
        await served!.server.dmaWrite(ring + slot * 4096, descriptor);
      },
    });
    served = s;
    const guest = await client.dmaMap(ring, 16 * 4096);
    const start = Buffer.alloc(32);
    start.writeBigUInt64LE(4096n, 0);
    start.writeUInt32LE(1, 8);
    start.writeBigUInt64LE(BigInt(ring), 16);
    start.writeBigUInt64LE(BigInt(16 * 4096), 24);
    await client.feature(FEATURE.SET | FEATURE.DMA_LOGGING_START, start);
    const doorbell = Buffer.alloc(4);
    doorbell.writeUInt32LE(3, 0);
    await client.regionWrite(0, 0, doorbell);
    // Answered only after the descriptor was in guest memory.
    expect(guest.readUInt32LE(3 * 4096)).toBe(0xd0d0_0003);
    const req = Buffer.alloc(24);
    req.writeBigUInt64LE(BigInt(ring), 0);
    req.writeBigUInt64LE(BigInt(16 * 4096), 8);
    req.writeBigUInt64LE(4096n, 16);
    expect((await client.feature(FEATURE.GET | FEATURE.DMA_LOGGING_REPORT, req, 40)).readBigUInt64LE(24)).toBe(1n << 3n);
    // A reaction that fails is an error reply with its code.
    doorbell.writeUInt32LE(99, 0); // outside the mapped ring
    expect(await errnoOf(client.regionWrite(0, 0, doorbell))).toBe("EINVAL");
  });
});
