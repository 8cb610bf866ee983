// The vfio-user server driven by the spec-based test client: version negotiation, device,
// region and interrupt info (golden bytes), region access over the device's regions, DMA
// windows and the server's DMA to the client, reset, one client at a time, and the socket file.
import { existsSync, statSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { MigrationDevice } from "../../../src/migration/v2/migration-device.js";
import { CMD, ReplyError, TestClient } from "./client.js";
import { type Served, serve } from "./helpers.js";

const REGIONS = [
  { name: "regs", size: 256 },
  { name: "memory", size: 40_000 },
];

let served: Served | undefined;
const clients: TestClient[] = [];
afterEach(async () => {
  for (const c of clients.splice(0)) await c.close();
  await served?.close();
  served = undefined;
});

async function setup(options: Parameters<typeof serve>[1] = {}): Promise<{ device: MigrationDevice; client: TestClient; served: Served }> {
  const device = new MigrationDevice({ regions: REGIONS });
  served = await serve(device, options);
  const client = await TestClient.connect(served.path);
  clients.push(client);
  return { device, client, served };
}

async function expectErrno(promise: Promise<unknown>, code: string): Promise<void> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(ReplyError);
  expect((error as ReplyError).code).toBe(code);
}

describe("vfio-user server: negotiation and device info", () => {
  it("VERSION answers 0.1 with the JSON capabilities", async () => {
    const { client } = await setup({ maxDataXferSize: 65536 });
    const v = await client.version({ capabilities: { max_msg_fds: 8, max_data_xfer_size: 4096, migration: { pgsize: 8192 } } });
    expect(v.major).toBe(0);
    expect(v.minor).toBe(1);
    expect(v.json).toEqual({
      capabilities: { max_msg_fds: 0, max_data_xfer_size: 65536, max_dma_maps: 1024, pgsizes: 4096, write_multiple: true, migration: { pgsize: 8192 } },
    });
  });

  it("commands before VERSION, a second VERSION, another major and bad JSON are EINVAL / ENOTSUP", async () => {
    const { client } = await setup();
    await expectErrno(client.deviceInfo(), "EINVAL");
    const bad = Buffer.concat([Buffer.from([0, 0, 1, 0]), Buffer.from("{not json\0")]);
    await expectErrno(client.call(CMD.VERSION, bad), "EINVAL");
    await expectErrno(client.call(CMD.VERSION, Buffer.concat([Buffer.from([0, 0, 1, 0]), Buffer.from("{}")])), "EINVAL"); // no NUL
    await expectErrno(client.call(CMD.VERSION, Buffer.from([1, 0, 0, 0])), "ENOTSUP");
    await expectErrno(client.version({ capabilities: { migration: { pgsize: 1000 } } }), "EINVAL");
    await client.version();
    await expectErrno(client.version(), "EINVAL");
  });

  it("golden bytes: DEVICE_GET_INFO, GET_REGION_INFO of config space and a BAR, GET_IRQ_INFO of INTx", async () => {
    const { client } = await setup();
    await client.version();
    const info = Buffer.alloc(16);
    info.writeUInt32LE(16, 0);
    expect([...(await client.call(CMD.DEVICE_GET_INFO, info))]).toEqual([16, 0, 0, 0, 3, 0, 0, 0, 9, 0, 0, 0, 5, 0, 0, 0]);
    const config = await client.regionInfo(7);
    expect(config.raw.toString("hex")).toBe(`20000000030000000700000000000000${"0001000000000000"}${"0000000000070000"}`);
    const bar1 = await client.regionInfo(1);
    // 40000 bytes in a 64 KiB BAR, at VFIO's offset 1 << 40.
    expect(bar1.raw.toString("hex")).toBe(`20000000030000000100000000000000${"0000010000000000"}${"0000000000010000"}`);
    expect((await client.regionInfo(2)).size).toBe(0);
    expect((await client.regionInfo(6)).flags).toBe(0);
    await expectErrno(client.regionInfo(9), "EINVAL");
    const irq = Buffer.alloc(16);
    irq.writeUInt32LE(16, 0);
    expect([...(await client.call(CMD.DEVICE_GET_IRQ_INFO, irq))]).toEqual([16, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
    irq.writeUInt32LE(2, 8);
    expect((await client.call(CMD.DEVICE_GET_IRQ_INFO, irq)).readUInt32LE(12)).toBe(0);
  });
});

describe("vfio-user server: regions", () => {
  it("REGION_WRITE / REGION_READ reach the device's regions; the BAR's tail reads as zeros", async () => {
    const { client, device } = await setup();
    await client.version();
    await client.regionWrite(1, 1000, Buffer.from("hello, device"));
    expect(Buffer.from(device.model.view(1).subarray(1000, 1013)).toString()).toBe("hello, device");
    expect((await client.regionRead(1, 998, 17)).toString("hex")).toBe(`0000${Buffer.from("hello, device").toString("hex")}0000`);
    expect([...(await client.regionRead(1, 65536 - 4, 4))]).toEqual([0, 0, 0, 0]);
    await client.regionWrite(1, 39_998, Buffer.from([1, 2, 3, 4])); // straddles the region's end
    expect([...device.model.view(1).subarray(39_998)]).toEqual([1, 2]);
    await expectErrno(client.regionRead(1, 65535, 2), "EINVAL");
    await expectErrno(client.regionRead(3, 0, 4), "EINVAL");
    await expectErrno(client.regionRead(12, 0, 4), "EINVAL");
  });

  it("a region over the emulator's own memory is a BAR like any other", async () => {
    const regs = new Uint8Array(new ArrayBuffer(256));
    const device = new MigrationDevice({ regions: [{ name: "regs", memory: regs }, REGIONS[1]!] });
    served = await serve(device);
    const client = await TestClient.connect(served.path);
    clients.push(client);
    await client.version();
    expect((await client.regionInfo(0)).size).toBe(4096);
    await client.regionWrite(0, 8, Buffer.from([1, 2, 3]));
    expect([...regs.subarray(8, 11)]).toEqual([1, 2, 3]);
    regs[20] = 0x77;
    expect((await client.regionRead(0, 20, 1))[0]).toBe(0x77);
  });

  it("REGION_WRITE_MULTI: small writes in order, the count done in the reply; malformed ones EINVAL", async () => {
    const { client, device } = await setup();
    await client.version();
    const entry = (region: number, offset: number, data: number[]): Buffer => {
      const e = Buffer.alloc(24);
      e.writeBigUInt64LE(BigInt(offset), 0);
      e.writeUInt32LE(region, 8);
      e.writeUInt32LE(data.length, 12);
      e.set(data, 16);
      return e;
    };
    const multi = (entries: Buffer[], claimed = entries.length): Buffer => {
      const head = Buffer.alloc(8);
      head.writeBigUInt64LE(BigInt(claimed), 0);
      return Buffer.concat([head, ...entries]);
    };
    const reply = await client.call(15, multi([entry(1, 0, [1, 2, 3, 4, 5, 6, 7, 8]), entry(1, 2, [9]), entry(7, 4, [2, 0])]));
    expect(reply.readBigUInt64LE(0)).toBe(3n);
    expect([...device.model.view(1).subarray(0, 8)]).toEqual([1, 2, 9, 4, 5, 6, 7, 8]);
    expect((await client.regionRead(7, 4, 2)).readUInt16LE(0)).toBe(2);
    await expectErrno(client.call(15, multi([entry(1, 0, [1])], 2)), "EINVAL");
    const nine = entry(1, 0, []);
    nine.writeUInt32LE(9, 12);
    await expectErrno(client.call(15, multi([nine])), "EINVAL");
  });

  it("config space: ids, BAR sizing through REGION_WRITE", async () => {
    const { client } = await setup({ pci: { vendorId: 0x1af4, deviceId: 0x1234 } });
    await client.version();
    const head = await client.regionRead(7, 0, 4);
    expect(head.readUInt16LE(0)).toBe(0x1af4);
    expect(head.readUInt16LE(2)).toBe(0x1234);
    await client.regionWrite(7, 0x14, Buffer.from([0xff, 0xff, 0xff, 0xff]));
    expect((await client.regionRead(7, 0x14, 4)).readUInt32LE(0)).toBe(0xffff0000);
    await client.regionWrite(7, 0, Buffer.from([0, 0]));
    expect((await client.regionRead(7, 0, 2)).readUInt16LE(0)).toBe(0x1af4);
  });

  it("a write to a stopped device is refused (EINVAL); reads still work", async () => {
    const { client, device } = await setup();
    await client.version();
    await device.setState("STOP");
    await expectErrno(client.regionWrite(0, 0, Buffer.from([1])), "EINVAL");
    expect((await client.regionRead(0, 0, 1)).length).toBe(1);
  });

  it("a count past max_data_xfer_size is EINVAL; a count that disagrees with the data is EINVAL", async () => {
    const { client } = await setup({ maxDataXferSize: 4096 });
    await client.version();
    await expectErrno(client.regionRead(1, 0, 8192), "EINVAL");
    const body = Buffer.alloc(16 + 4);
    body.writeUInt32LE(1, 8);
    body.writeUInt32LE(8, 12);
    await expectErrno(client.call(CMD.REGION_WRITE, body), "EINVAL");
  });
});

describe("vfio-user server: interrupts", () => {
  it("SET_IRQS masks and unmasks INTx; eventfds are refused (none can arrive); bad flags EINVAL", async () => {
    const { client, served } = await setup();
    await client.version();
    const irqs = (flags: number, index: number, start: number, count: number, data: number[] = []): Buffer => {
      const b = Buffer.alloc(20 + data.length);
      b.writeUInt32LE(20 + data.length, 0);
      b.writeUInt32LE(flags, 4);
      b.writeUInt32LE(index, 8);
      b.writeUInt32LE(start, 12);
      b.writeUInt32LE(count, 16);
      b.set(data, 20);
      return b;
    };
    await client.call(CMD.DEVICE_SET_IRQS, irqs(1 | 8, 0, 0, 1));
    expect(served.server.intxMasked).toBe(true);
    await client.call(CMD.DEVICE_SET_IRQS, irqs(2 | 16, 0, 0, 1, [0]));
    expect(served.server.intxMasked).toBe(true);
    await client.call(CMD.DEVICE_SET_IRQS, irqs(2 | 16, 0, 0, 1, [1]));
    expect(served.server.intxMasked).toBe(false);
    await client.call(CMD.DEVICE_SET_IRQS, irqs(1 | 32, 1, 0, 0)); // disable all MSI: none to disable
    await expectErrno(client.call(CMD.DEVICE_SET_IRQS, irqs(4 | 32, 0, 0, 1)), "ENOTSUP");
    await expectErrno(client.call(CMD.DEVICE_SET_IRQS, irqs(1 | 2 | 32, 0, 0, 1)), "EINVAL");
    await expectErrno(client.call(CMD.DEVICE_SET_IRQS, irqs(1 | 32, 2, 0, 1)), "EINVAL");
  });
});

describe("vfio-user server: DMA", () => {
  it("windows: overlap EEXIST, unmap must match (ENOENT), unmap-all, dirty bitmap ENOTSUP", async () => {
    const { client } = await setup();
    await client.version();
    await client.dmaMap(0x10000, 0x4000);
    await expectErrno(client.dmaMap(0x12000, 0x4000), "EEXIST");
    await expectErrno(client.dmaUnmap(0x10000, 0x2000), "ENOENT");
    await expectErrno(client.dmaUnmap(0x10000, 0x4000, 1), "ENOTSUP");
    const echoed = await client.dmaUnmap(0x10000, 0x4000);
    expect(echoed.length).toBe(24);
    expect(echoed.readBigUInt64LE(8)).toBe(0x10000n);
    await client.dmaMap(0x20000, 0x1000);
    await client.dmaUnmap(0, 0, 2);
    await expectErrno(client.dmaUnmap(0x20000, 0x1000), "ENOENT");
  });

  it("the device writes and reads guest memory through DMA_WRITE / DMA_READ, split by the client's max_data_xfer_size", async () => {
    const { client, served } = await setup();
    await client.version({ capabilities: { max_data_xfer_size: 1000 } });
    const guest = await client.dmaMap(0x100000, 0x3000);
    await client.dmaMap(0x103000, 0x1000, 1); // read-only, adjacent
    const bytes = Buffer.alloc(2500, 0xab);
    await served.server.dmaWrite(0x100010, bytes);
    expect(guest.subarray(0x10, 0x10 + 2500).equals(bytes)).toBe(true);
    expect(client.dmaLog.filter((d) => d.cmd === CMD.DMA_WRITE).map((d) => d.count)).toEqual([1000, 1000, 500]);
    guest.write("guest data", 0x2ff0);
    client.guest.find(0x103000, 6)!.write("tail!!");
    const read = await served.server.dmaRead(0x102ff0, 22);
    expect(Buffer.from(read).toString()).toBe("guest data\0\0\0\0\0\0tail!!");
    await expect(served.server.dmaWrite(0x103000, Buffer.alloc(4))).rejects.toMatchObject({ code: "EINVAL" });
    await expect(served.server.dmaRead(0x200000, 4)).rejects.toMatchObject({ code: "EINVAL" });
  });

  it("a client that refuses DMA is EIO; one that never answers is ETIMEDOUT; the server stays usable", async () => {
    const { client, served } = await setup({ dmaTimeoutMs: 1_500 });
    await client.version();
    await client.dmaMap(0x1000, 0x1000);
    client.guest.windows.length = 0; // the client forgets its memory: it answers EFAULT
    await expect(served.server.dmaWrite(0x1000, Buffer.alloc(8))).rejects.toMatchObject({ code: "EIO" });
    client.socket.pause(); // and now it does not read at all
    await expect(served.server.dmaRead(0x1000, 8)).rejects.toMatchObject({ code: "ETIMEDOUT" });
    client.socket.resume();
    expect((await client.deviceInfo()).regions).toBe(9);
  });

  it("no client: DMA is EIO", async () => {
    const device = new MigrationDevice({ regions: REGIONS });
    served = await serve(device);
    await expect(served.server.dmaWrite(0, Buffer.alloc(1))).rejects.toMatchObject({ code: "EIO" });
  });
});

describe("vfio-user server: reset, clients, socket", () => {
  it("DEVICE_RESET returns the device to RUNNING and config space to its power-on values", async () => {
    const { client, device } = await setup();
    await client.version();
    await client.regionWrite(7, 4, Buffer.from([6, 0]));
    await device.setState("STOP");
    await client.reset();
    expect(device.state).toBe("RUNNING");
    expect((await client.regionRead(7, 4, 2)).readUInt16LE(0)).toBe(0);
  });

  it("one client at a time (one more may wait); after a disconnect the device is as it was and the next client negotiates afresh", async () => {
    const { client, device, served } = await setup();
    await client.version();
    await client.regionWrite(1, 0, Buffer.from("kept"));
    await client.dmaMap(0x1000, 0x1000);
    // A second client waits for the first to leave; a third is hung up on at once.
    const third = await TestClient.connect(served.path);
    clients.push(third);
    const fourth = await TestClient.connect(served.path);
    await fourth.closed();
    await device.setState("STOP");
    await client.close();
    await expectErrno(third.deviceInfo(), "EINVAL");
    await third.version();
    expect((await third.regionRead(1, 0, 4)).toString()).toBe("kept");
    expect(device.state).toBe("STOP");
    // The old client's windows went with it.
    await expect(served.server.dmaWrite(0x1000, Buffer.alloc(1))).rejects.toMatchObject({ code: "EINVAL" });
  });

  it("unknown and unimplemented commands get an error reply, never a dropped connection", async () => {
    const { client } = await setup();
    await client.version();
    await expectErrno(client.call(99), "ENOTSUP");
    await expectErrno(client.call(CMD.DEVICE_GET_REGION_IO_FDS, Buffer.alloc(16)), "ENOTSUP");
    await expectErrno(client.call(14, Buffer.alloc(8)), "ENOTSUP");
    expect((await client.deviceInfo()).irqs).toBe(5);
  });

  it("no_reply: the command runs and nothing comes back", async () => {
    const { client, device } = await setup();
    await client.version();
    const body = Buffer.alloc(17);
    body.writeUInt32LE(1, 8);
    body.writeUInt32LE(1, 12);
    body[16] = 0x5a;
    client.sendNoReply(CMD.REGION_WRITE, body);
    expect((await client.regionRead(1, 0, 1))[0]).toBe(0x5a);
    expect(device.model.view(1)[0]).toBe(0x5a);
  });

  it("the socket file is 0600, an existing path is refused, close removes it", async () => {
    const { served } = await setup();
    expect(statSync(served.path).mode & 0o777).toBe(0o600);
    const device = new MigrationDevice({ regions: REGIONS });
    await expect(serve(device, { path: served.path })).rejects.toMatchObject({ code: "EINVAL" });
    await expect(serve(device, { path: join(served.dir, "missing", "dev.sock") })).rejects.toMatchObject({ code: "EIO" });
    await served.server.close();
    expect(existsSync(served.path)).toBe(false);
    await new Promise<void>((resolve) => {
      const s = connect(served.path);
      s.on("error", () => resolve());
    });
  });
});
