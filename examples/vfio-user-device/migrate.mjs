// How to drive a vfio-user device: a minimal client, written from the protocol specification
// (qemu docs/interop/vfio-user.rst), that plays the VMM. It starts two device processes
// (device.mjs), rings the first one's doorbell so it DMAs into guest memory, fills its memory
// BAR, migrates it to the second (pre-copy, stop-copy, resume) and compares the BARs.
//
//   node examples/vfio-user-device/migrate.mjs
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

// Command numbers, DEVICE_FEATURE bits and migration states (the spec's tables).
const VERSION = 1;
const DMA_MAP = 2;
const REGION_READ = 9;
const REGION_WRITE = 10;
const DMA_WRITE = 12;
const FEATURE = 16;
const MIG_READ = 17;
const MIG_WRITE = 18;
const SET = 1 << 17;
const MIG_DEVICE_STATE = 2;
const [STOP, RUNNING, STOP_COPY, RESUMING, PRE_COPY] = [1, 2, 3, 4, 6];
const ENOMSG = 42;

/** One connection: requests with ids, replies matched to them, the device's DMA served from `guest`. */
async function open(path, guest) {
  const socket = connect(path);
  await new Promise((resolve, reject) => socket.once("connect", resolve).once("error", reject));
  const waiting = new Map();
  let buffered = Buffer.alloc(0);
  let nextId = 0;
  socket.on("data", (chunk) => {
    buffered = Buffer.concat([buffered, chunk]);
    while (buffered.length >= 16 && buffered.length >= buffered.readUInt32LE(4)) {
      const size = buffered.readUInt32LE(4);
      const [id, cmd, flags, error] = [buffered.readUInt16LE(0), buffered.readUInt16LE(2), buffered.readUInt32LE(8), buffered.readUInt32LE(12)];
      const body = buffered.subarray(16, size);
      buffered = buffered.subarray(size);
      if ((flags & 0xf) === 1) waiting.get(id)?.({ flags, error, body });
      else if (cmd === DMA_WRITE) {
        // The device writes guest memory: copy the data in, answer with address and count.
        const address = Number(body.readBigUInt64LE(0) - guest.iova);
        body.copy(guest.bytes, address, 16);
        socket.write(message(id, cmd, body.subarray(0, 16), 1));
      }
    }
  });
  const call = (cmd, body = Buffer.alloc(0)) =>
    new Promise((resolve, reject) => {
      const id = nextId++ & 0xffff;
      waiting.set(id, (reply) => {
        waiting.delete(id);
        if (reply.flags & 0x20) reject(Object.assign(new Error(`command ${cmd}: errno ${reply.error}`), { errno: reply.error }));
        else resolve(reply.body);
      });
      socket.write(message(id, cmd, body, 0));
    });
  const u32s = (...values) => Buffer.from(new Uint32Array(values).buffer);
  const client = {
    call,
    close: () => socket.destroy(),
    async regionWrite(region, offset, data) {
      const head = Buffer.alloc(16);
      head.writeBigUInt64LE(BigInt(offset), 0);
      head.writeUInt32LE(region, 8);
      head.writeUInt32LE(data.length, 12);
      await call(REGION_WRITE, Buffer.concat([head, data]));
    },
    async regionRead(region, offset, count) {
      const head = Buffer.alloc(16);
      head.writeBigUInt64LE(BigInt(offset), 0);
      head.writeUInt32LE(region, 8);
      head.writeUInt32LE(count, 12);
      return (await call(REGION_READ, head)).subarray(16);
    },
    setState: (state) => call(FEATURE, Buffer.concat([u32s(16, SET | MIG_DEVICE_STATE, state), Buffer.from([0xff, 0xff, 0xff, 0xff])])),
    /** MIG_DATA_READ: the data, shorter than asked when there is no more (for now). */
    readData: async (size) => (await call(MIG_READ, u32s(8 + size, size))).subarray(8),
    writeData: (data) => call(MIG_WRITE, Buffer.concat([u32s(8 + data.length, data.length), data])),
  };
  // VERSION with our capabilities, NUL-terminated JSON.
  await call(VERSION, Buffer.concat([Buffer.from([0, 0, 1, 0]), Buffer.from(`${JSON.stringify({ capabilities: { max_data_xfer_size: 1 << 20 } })}\0`)]));
  return client;
}

function message(id, cmd, body, flags) {
  const head = Buffer.alloc(16);
  head.writeUInt16LE(id, 0);
  head.writeUInt16LE(cmd, 2);
  head.writeUInt32LE(16 + body.length, 4);
  head.writeUInt32LE(flags, 8);
  return Buffer.concat([head, body]);
}

function startDevice(path) {
  const child = spawn(process.execPath, [fileURLToPath(new URL("./device.mjs", import.meta.url)), path], { stdio: ["ignore", "inherit", "pipe"] });
  return new Promise((resolve, reject) => {
    let text = "";
    child.stderr.on("data", (d) => {
      text += d;
      if (text.includes("listening on")) resolve(child);
    });
    child.on("exit", (code) => reject(new Error(`device exited (${code}): ${text}`)));
  });
}

const dir = mkdtempSync(join(tmpdir(), "vfio-user-example-"));
const children = [];
try {
  children.push(await startDevice(join(dir, "source.sock")), await startDevice(join(dir, "target.sock")));
  const guest = { iova: 0x10_0000n, bytes: Buffer.alloc(64 * 1024) };
  const source = await open(join(dir, "source.sock"), guest);

  // The guest's driver: a DMA window for the ring, its address in register 1, then 3 doorbells.
  const map = Buffer.alloc(32);
  map.writeUInt32LE(32, 0);
  map.writeUInt32LE(3, 4); // readable | writable
  map.writeBigUInt64LE(guest.iova, 16);
  map.writeBigUInt64LE(BigInt(guest.bytes.length), 24);
  await source.call(DMA_MAP, map);
  await source.regionWrite(0, 4, Buffer.from(new Uint32Array([Number(guest.iova)]).buffer));
  for (const slot of [0, 1, 2]) await source.regionWrite(0, 0, Buffer.from(new Uint32Array([slot]).buffer));
  console.log(
    `doorbells: ${(await source.regionRead(0, 8, 4)).readUInt32LE(0)} completions, record 2 in guest memory: ${guest.bytes.subarray(32, 40).toString("hex")}`,
  );
  const memory = Buffer.alloc(256 * 1024);
  for (let i = 0; i < memory.length; i += 4) memory.writeUInt32LE((i * 2654435761) >>> 0, i);
  for (let at = 0; at < memory.length; at += 65536) await source.regionWrite(1, at, memory.subarray(at, at + 65536));

  // Source: pre-copy until no more for now, stop-copy until a short read.
  const stream = [];
  await source.setState(PRE_COPY);
  for (;;) {
    const chunk = await source.readData(1 << 20).catch((e) => (e.errno === ENOMSG ? Buffer.alloc(0) : Promise.reject(e)));
    stream.push(chunk);
    if (chunk.length < 1 << 20) break;
  }
  await source.setState(STOP_COPY);
  for (;;) {
    const chunk = await source.readData(1 << 20);
    stream.push(chunk);
    if (chunk.length < 1 << 20) break;
  }
  await source.setState(STOP);

  // Target: RESUMING, the stream, STOP (validated here), RUNNING.
  const target = await open(join(dir, "target.sock"), guest);
  await target.setState(RESUMING);
  for (const chunk of stream) if (chunk.length > 0) await target.writeData(chunk);
  await target.setState(STOP);
  await target.setState(RUNNING);

  const bars = async (c) => Buffer.concat([await c.regionRead(0, 0, 4096), ...(await Promise.all([0, 1, 2, 3].map((i) => c.regionRead(1, i * 65536, 65536))))]);
  const same = (await bars(source)).equals(await bars(target));
  console.log(`migrated ${Buffer.concat(stream).length} stream bytes; BARs ${same ? "identical" : "DIFFER"}`);
  source.close();
  target.close();
  if (!same) process.exitCode = 1;
} finally {
  for (const child of children) child.kill("SIGTERM");
  rmSync(dir, { recursive: true, force: true });
}
