// The source side, as a VMM shim would drive a VFIO device: every step is an ioctl number with
// a struct in bytes, or a read(2) on the data fd. Frames go to stdout; the summary to stderr.
import { once } from "node:events";
import {
  dmaLoggingReportArg,
  dmaLoggingStartArg,
  migStateSetArg,
  openVfioDevice,
  precopyInfoArg,
  readFeatureU64,
  readMigState,
  readPrecopyInfo,
  reportBitmap,
  VFIO_DEVICE_FEATURE,
  VFIO_DEVICE_FEATURE_GET,
  VFIO_DEVICE_FEATURE_MIGRATION,
  VFIO_DEVICE_FEATURE_PROBE,
  VFIO_DEVICE_FEATURE_SET,
  VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP,
  VFIO_DEVICE_STATE_PRE_COPY,
  VFIO_DEVICE_STATE_STOP,
  VFIO_DEVICE_STATE_STOP_COPY,
  VFIO_MIG_GET_PRECOPY_INFO,
  VFIO_MIGRATION_PRE_COPY,
  vfioFeatureArg,
} from "migstream";
import { EmulatedDevice, FRAME_DEVICE_DATA, FRAME_END, FRAME_GUEST_PAGE, frame, GUEST_BYTES, GUEST_IOVA, PAGE } from "./device.mjs";

const steps = Number(process.argv[2] ?? 200);
const device = new EmulatedDevice(new Uint8Array(GUEST_BYTES));
const file = openVfioDevice(device.migration);

async function send(kind, payload) {
  if (!process.stdout.write(frame(kind, payload))) await once(process.stdout, "drain");
}

async function feature(arg) {
  await file.ioctl(VFIO_DEVICE_FEATURE, arg);
  return arg;
}

/** Reads the data fd until ENOMSG (pre-copy, nothing now) or 0 (end of stream). */
async function drain(fd) {
  for (;;) {
    let chunk;
    try {
      chunk = await file.read(fd, 1 << 20);
    } catch (error) {
      if (error.code === "ENOMSG") return "enomsg";
      throw error;
    }
    if (chunk.length === 0) return "eof";
    await send(FRAME_DEVICE_DATA, chunk);
  }
}

/** DMA_LOGGING_REPORT over guest memory: sends the pages the device wrote since the last report. */
async function sendDirtyGuestPages() {
  const arg = await feature(dmaLoggingReportArg(GUEST_IOVA, GUEST_BYTES, PAGE));
  const bitmap = reportBitmap(arg);
  let pages = 0;
  for (let page = 0; page < GUEST_BYTES / PAGE; page++) {
    if ((bitmap[page >> 3] & (1 << (page & 7))) === 0) continue;
    const payload = new Uint8Array(8 + PAGE);
    new DataView(payload.buffer).setBigUint64(0, GUEST_IOVA + BigInt(page * PAGE), true);
    payload.set(device.guest.subarray(page * PAGE, (page + 1) * PAGE), 8);
    await send(FRAME_GUEST_PAGE, payload);
    pages++;
  }
  return pages;
}

// Discovery: PROBE, then the migration flags.
await file.ioctl(VFIO_DEVICE_FEATURE, vfioFeatureArg(VFIO_DEVICE_FEATURE_PROBE | VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIGRATION));
const flags = readFeatureU64(await feature(vfioFeatureArg(VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIGRATION, 8)));
if ((flags & BigInt(VFIO_MIGRATION_PRE_COPY)) === 0n) throw new Error("the example needs PRE_COPY");

// Guest memory goes first in full; DMA logging tracks what the device writes afterwards.
for (let i = 0; i < 10; i++) device.step();
const start = await feature(dmaLoggingStartArg(PAGE, [{ iova: GUEST_IOVA, length: GUEST_BYTES }]));
const trackedPageSize = readFeatureU64(start);
for (let page = 0; page < GUEST_BYTES / PAGE; page++) {
  const payload = new Uint8Array(8 + PAGE);
  new DataView(payload.buffer).setBigUint64(0, GUEST_IOVA + BigInt(page * PAGE), true);
  payload.set(device.guest.subarray(page * PAGE, (page + 1) * PAGE), 8);
  await send(FRAME_GUEST_PAGE, payload);
}

// Pre-copy: the device keeps working; each round sends what PRE_COPY info says is there.
const fd = readMigState(await feature(migStateSetArg(VFIO_DEVICE_STATE_PRE_COPY))).dataFd;
const rounds = [];
for (let round = 0; round < 5; round++) {
  const info = precopyInfoArg();
  await file.ioctl(VFIO_MIG_GET_PRECOPY_INFO, info, fd);
  const { initialBytes, dirtyBytes } = readPrecopyInfo(info);
  await drain(fd);
  const guestPages = await sendDirtyGuestPages();
  rounds.push({ initialBytes: Number(initialBytes), dirtyBytes: Number(dirtyBytes), guestPages });
  for (let i = 0; i < steps / 5; i++) device.step();
}

// Stop-copy: the device stops; the rest of its state and the last dirty guest pages go.
await feature(migStateSetArg(VFIO_DEVICE_STATE_STOP_COPY));
const end = await drain(fd);
const lastPages = await sendDirtyGuestPages();
await file.ioctl(VFIO_DEVICE_FEATURE, vfioFeatureArg(VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP));
await file.close(fd);
await feature(migStateSetArg(VFIO_DEVICE_STATE_STOP));
await send(FRAME_END, new Uint8Array(0));
process.stdout.end();
process.stderr.write(
  `${JSON.stringify({ side: "source", digest: device.digest(), trackedPageSize: Number(trackedPageSize), rounds, end, lastPages, lastArc: device.lastArc })}\n`,
);
