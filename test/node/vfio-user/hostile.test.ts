// Hostile vfio-user clients: cut and oversized headers, sizes past the limit, messages never
// finished, unknown commands and types, migration data outside a session. Each gets an error
// reply or a clean close, and the server goes on serving the next client.
import { connect, type Socket } from "node:net";
import fc from "fast-check";
import { afterEach, describe, expect, it } from "vitest";
import { MigrationDevice } from "../../../src/migration/v2/migration-device.js";
import { CMD, encodeMessage, FEATURE, ReplyError, TestClient } from "./client.js";
import { type Served, serve, until } from "./helpers.js";

let served: Served | undefined;
afterEach(async () => {
  await served?.close();
  served = undefined;
});

async function start(options: Parameters<typeof serve>[1] = {}): Promise<{ device: MigrationDevice; served: Served }> {
  const device = new MigrationDevice({ regions: [{ name: "bar", size: 8192 }] });
  served = await serve(device, options);
  return { device, served };
}

/** A raw connection: everything the server sends, and when it closed. */
function raw(path: string): Promise<{ socket: Socket; received: () => Buffer; closed: Promise<void> }> {
  return new Promise((resolve, reject) => {
    const socket = connect(path);
    const chunks: Buffer[] = [];
    socket.on("data", (d: Buffer) => chunks.push(d));
    socket.on("error", () => undefined);
    const closed = new Promise<void>((r) => socket.on("close", () => r()));
    socket.once("connect", () => resolve({ socket, received: () => Buffer.concat(chunks), closed }));
    socket.once("error", reject);
  });
}

/** The next client can connect, negotiate and use the device. */
async function stillServes(path: string, served: Served): Promise<void> {
  await until(() => !served.server.connected);
  const client = await TestClient.connect(path);
  await client.version();
  expect((await client.deviceInfo()).regions).toBe(9);
  await client.close();
}

function errorReply(bytes: Buffer, id: number, errno: string): void {
  expect(bytes.length).toBeGreaterThanOrEqual(16);
  expect(bytes.readUInt16LE(0)).toBe(id);
  expect(bytes.readUInt32LE(4)).toBe(16);
  expect(bytes.readUInt32LE(8)).toBe(0x21); // reply | error
  expect(new ReplyError(0, bytes.readUInt32LE(12)).code).toBe(errno);
}

describe("vfio-user server against hostile clients", () => {
  it.each([
    ["past the limit: E2BIG", 0x7fffffff, "E2BIG"],
    ["below the header: EINVAL", 4, "EINVAL"],
  ] as const)("a size field %s, then the connection is closed before any body is read", async (_what, size, errno) => {
    const { served } = await start({ maxDataXferSize: 4096 });
    const c = await raw(served.path);
    const head = encodeMessage(7, CMD.REGION_WRITE, Buffer.alloc(0));
    head.writeUInt32LE(size, 4);
    c.socket.write(head);
    await c.closed;
    errorReply(c.received(), 7, errno);
    await stillServes(served.path, served);
  });

  it("a truncated header and a half-sent body are dropped at the message deadline", async () => {
    const { served } = await start({ messageTimeoutMs: 200 });
    const a = await raw(served.path);
    a.socket.write(encodeMessage(1, CMD.VERSION, Buffer.alloc(4)).subarray(0, 9));
    await a.closed;
    expect(a.received().length).toBe(0);
    const b = await raw(served.path);
    // A drip: one byte of the body now and then never completes the message in time.
    const message = encodeMessage(1, CMD.VERSION, Buffer.alloc(4000));
    b.socket.write(message.subarray(0, 100));
    const drip = setInterval(() => b.socket.write(Buffer.alloc(1)), 50);
    await b.closed;
    clearInterval(drip);
    await stillServes(served.path, served);
  });

  it("a client dropped at the deadline takes its DMA logging with it; the next one starts its own", async () => {
    const { served } = await start({ messageTimeoutMs: 200 });
    const startLogging = async (client: TestClient): Promise<void> => {
      await client.dmaMap(0x10000, 0x4000);
      const range = Buffer.alloc(32);
      range.writeBigUInt64LE(4096n, 0);
      range.writeUInt32LE(1, 8);
      range.writeBigUInt64LE(0x10000n, 16);
      range.writeBigUInt64LE(0x4000n, 24);
      await client.feature(FEATURE.SET | FEATURE.DMA_LOGGING_START, range);
    };
    const first = await TestClient.connect(served.path);
    await first.version();
    await startLogging(first);
    first.socket.write(encodeMessage(5, CMD.DEVICE_GET_INFO, Buffer.alloc(16)).subarray(0, 10));
    await first.closed();
    const second = await TestClient.connect(served.path);
    await second.version();
    await startLogging(second);
    await second.close();
  });

  it("a client vanishing mid-message leaves the device as it was", async () => {
    const { served, device } = await start();
    const client = await TestClient.connect(served.path);
    await client.version();
    await client.regionWrite(0, 0, Buffer.from("before"));
    const write = encodeMessage(9, CMD.REGION_WRITE, Buffer.alloc(16 + 6));
    client.socket.write(write.subarray(0, 20));
    client.socket.destroy();
    await until(() => !served.server.connected);
    expect(Buffer.from(device.model.view(0).subarray(0, 6)).toString()).toBe("before");
    await stillServes(served.path, served);
  });

  it("unknown commands, unknown message types and stray replies: error replies or nothing, the connection stays", async () => {
    const { served } = await start();
    const client = await TestClient.connect(served.path);
    await client.version();
    for (const cmd of [0, 14, 19, 0xffff]) {
      await expect(client.call(cmd, Buffer.alloc(24))).rejects.toMatchObject({ code: "ENOTSUP" });
    }
    const odd = await client.callRaw(CMD.DEVICE_GET_INFO, Buffer.alloc(16), 5);
    expect(odd.flags & 0x20).toBe(0x20);
    expect(new ReplyError(0, odd.error).code).toBe("EINVAL");
    client.socket.write(encodeMessage(4242, CMD.DMA_READ, Buffer.alloc(40), 1)); // a reply nobody asked for
    await expect(client.call(CMD.DEVICE_GET_INFO, Buffer.alloc(8))).rejects.toMatchObject({ code: "EINVAL" }); // too short
    expect((await client.deviceInfo()).regions).toBe(9);
    await client.close();
  });

  it("migration data outside a session: MIG_DATA_READ and MIG_DATA_WRITE are EINVAL", async () => {
    const { served } = await start();
    const client = await TestClient.connect(served.path);
    await client.version();
    await expect(client.migRead(4096)).rejects.toMatchObject({ code: "EINVAL" });
    await expect(client.migWrite(Buffer.alloc(64))).rejects.toMatchObject({ code: "EINVAL" });
    const short = Buffer.alloc(8 + 10);
    short.writeUInt32LE(8, 0);
    short.writeUInt32LE(64, 4);
    await expect(client.call(CMD.MIG_DATA_WRITE, short)).rejects.toMatchObject({ code: "EINVAL" });
    await client.close();
  });

  it("any segmentation of a client's messages gets the same replies", async () => {
    const { served } = await start();
    const version = Buffer.concat([Buffer.from([0, 0, 1, 0]), Buffer.from("{}\0")]);
    const info = Buffer.alloc(16);
    info.writeUInt32LE(16, 0);
    const write = Buffer.alloc(16 + 300, 0x3c);
    write.writeBigUInt64LE(100n, 0);
    write.writeUInt32LE(0, 8);
    write.writeUInt32LE(300, 12);
    const read = Buffer.from(write.subarray(0, 16));
    const session = Buffer.concat([
      encodeMessage(1, CMD.VERSION, version),
      encodeMessage(2, CMD.DEVICE_GET_INFO, info),
      encodeMessage(3, CMD.REGION_WRITE, write),
      encodeMessage(4, CMD.REGION_READ, read),
      encodeMessage(5, 77, Buffer.alloc(3)),
    ]);
    const replies = async (cuts: number[]): Promise<Buffer> => {
      await until(() => !served.server.connected);
      const c = await raw(served.path);
      for (let at = 0, i = 0; at < session.length; i++) {
        const step = cuts[i % cuts.length]!;
        c.socket.write(session.subarray(at, at + step));
        at += step;
        await new Promise((r) => setImmediate(r));
      }
      let seen = 0;
      await until(() => {
        const bytes = c.received();
        seen = 0;
        for (let at = 0; at + 16 <= bytes.length && at + bytes.readUInt32LE(at + 4) <= bytes.length; at += bytes.readUInt32LE(at + 4)) seen++;
        return seen === 5;
      });
      c.socket.destroy();
      return c.received();
    };
    const whole = await replies([session.length]);
    await fc.assert(
      fc.asyncProperty(fc.array(fc.integer({ min: 1, max: 40 }), { minLength: 1, maxLength: 10 }), async (cuts) => {
        expect((await replies(cuts)).equals(whole)).toBe(true);
      }),
      { seed: 2121, numRuns: 15 },
    );
  });

  it("a client pipelining many large commands without reading replies is served in order (reading pauses meanwhile)", async () => {
    // 64 messages of 4 KiB against a queue bound of four 8 KiB messages.
    const { served, device } = await start({ maxDataXferSize: 4096 });
    const c = await raw(served.path);
    const version = Buffer.concat([Buffer.from([0, 0, 1, 0]), Buffer.from("{}\0")]);
    const messages = [encodeMessage(0, CMD.VERSION, version)];
    for (let i = 1; i <= 64; i++) {
      const body = Buffer.alloc(16 + 4096, i);
      body.writeBigUInt64LE(0n, 0);
      body.writeUInt32LE(0, 8);
      body.writeUInt32LE(4096, 12);
      messages.push(encodeMessage(i, CMD.REGION_WRITE, body));
    }
    c.socket.write(Buffer.concat(messages));
    const replies = (): number[] => {
      const bytes = c.received();
      const ids: number[] = [];
      for (let at = 0; at + 16 <= bytes.length && at + bytes.readUInt32LE(at + 4) <= bytes.length; at += bytes.readUInt32LE(at + 4)) {
        ids.push(bytes.readUInt16LE(at));
      }
      return ids;
    };
    await until(() => replies().length === 65, 20_000);
    expect(replies()).toEqual(Array.from({ length: 65 }, (_, i) => i));
    expect(device.model.view(0)[0]).toBe(64);
    c.socket.destroy();
  });

  it("a client flooding commands while the server waits for its DMA reply is dropped", async () => {
    let served: Served | undefined;
    const device = new MigrationDevice({ regions: [{ name: "bar", size: 8192 }] });
    served = await serve(device, {
      maxDataXferSize: 4096,
      dmaTimeoutMs: 60_000,
      onRegionWrite: async () => {
        await served!.server.dmaRead(0x1000, 16);
      },
    });
    try {
      const c = await raw(served.path);
      const version = Buffer.concat([Buffer.from([0, 0, 1, 0]), Buffer.from("{}\0")]);
      const map = Buffer.alloc(32);
      map.writeUInt32LE(32, 0);
      map.writeUInt32LE(3, 4);
      map.writeBigUInt64LE(0x1000n, 16);
      map.writeBigUInt64LE(0x1000n, 24);
      const write = Buffer.alloc(17);
      write.writeUInt32LE(0, 8);
      write.writeUInt32LE(1, 12);
      c.socket.write(Buffer.concat([encodeMessage(1, CMD.VERSION, version), encodeMessage(2, CMD.DMA_MAP, map), encodeMessage(3, CMD.REGION_WRITE, write)]));
      // The server now waits for a DMA_READ reply that never comes; the client floods instead.
      await until(() => c.received().includes(Buffer.from([CMD.DMA_READ, 0])));
      const big = Buffer.alloc(16 + 4096);
      big.writeUInt32LE(4096, 12);
      for (let i = 0; i < 8; i++) c.socket.write(encodeMessage(10 + i, CMD.REGION_WRITE, big));
      await c.closed;
      await stillServes(served.path, served);
    } finally {
      await served.close();
    }
  });
});
