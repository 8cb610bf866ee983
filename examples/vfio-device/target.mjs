// The target side: frames from stdin; device data goes to the RESUMING data fd by write(2)
// (short writes are retried), guest pages into guest memory. The summary goes to stdout.
import {
  migStateGetArg,
  migStateSetArg,
  openVfioDevice,
  readMigState,
  VFIO_DEVICE_FEATURE,
  VFIO_DEVICE_STATE_RESUMING,
  VFIO_DEVICE_STATE_RUNNING,
  VFIO_DEVICE_STATE_STOP,
} from "migstream";
import { EmulatedDevice, FRAME_DEVICE_DATA, FRAME_END, FRAME_GUEST_PAGE, frames, GUEST_BYTES, GUEST_IOVA, PAGE } from "./device.mjs";

const device = new EmulatedDevice(new Uint8Array(GUEST_BYTES));
// A small write bound, as a data fd with a small pipe buffer would have.
const file = openVfioDevice(device.migration, { maxWrite: 64 * 1024 });

async function setState(state) {
  const arg = migStateSetArg(state);
  await file.ioctl(VFIO_DEVICE_FEATURE, arg);
  return readMigState(arg).dataFd;
}

await setState(VFIO_DEVICE_STATE_STOP);
const fd = await setState(VFIO_DEVICE_STATE_RESUMING);
let deviceBytes = 0;
let guestPages = 0;
let ended = false;
for await (const { kind, payload } of frames(process.stdin)) {
  if (kind === FRAME_DEVICE_DATA) {
    for (let at = 0; at < payload.length; ) at += await file.write(fd, payload.subarray(at));
    deviceBytes += payload.length;
  } else if (kind === FRAME_GUEST_PAGE) {
    const iova = new DataView(payload.buffer, payload.byteOffset, 8).getBigUint64(0, true);
    const offset = Number(iova - GUEST_IOVA);
    if (offset < 0 || offset + PAGE > GUEST_BYTES || payload.length !== 8 + PAGE) throw new Error(`guest page at ${iova} is outside guest memory`);
    device.guest.set(payload.subarray(8), offset);
    guestPages++;
  } else if (kind === FRAME_END) {
    ended = true;
  } else {
    throw new Error(`unknown frame kind ${kind}`);
  }
}
if (!ended) throw new Error("the source did not finish the migration");
// QEMU's load_cleanup closes the fd before RESUMING is left: the resume still completes.
await file.close(fd);
await setState(VFIO_DEVICE_STATE_STOP); // the stream is validated here
await setState(VFIO_DEVICE_STATE_RUNNING);
const get = migStateGetArg();
await file.ioctl(VFIO_DEVICE_FEATURE, get);
const state = readMigState(get).deviceState;
// The device runs on from where the source stopped.
const before = device.digest();
device.step();
process.stdout.write(`${JSON.stringify({ side: "target", digest: before, deviceBytes, guestPages, state, runsOn: device.digest() !== before })}\n`);
