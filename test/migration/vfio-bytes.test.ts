// openVfioDevice(): the VFIO uAPI in bytes. Golden struct bytes written field by field from the
// layouts of include/uapi/linux/vfio.h (not with the library's builders), a whole migration
// driven only through ioctl / read / write, and one test per errno the kernel answers.
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { MigrationError } from "../../src/core/errors.js";
import {
  dmaLoggingReportArg,
  dmaLoggingStartArg,
  migStateGetArg,
  migStateSetArg,
  openVfioDevice,
  precopyInfoArg,
  readFeatureU64,
  readMigState,
  readPrecopyInfo,
  reportBitmap,
  type VfioDeviceFile,
  vfioFeatureArg,
} from "../../src/migration/vfio-bytes/index.js";
import {
  VFIO_DEVICE_FEATURE,
  VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
  VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
  VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP,
  VFIO_DEVICE_FEATURE_GET,
  VFIO_DEVICE_FEATURE_MIG_DATA_SIZE,
  VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
  VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2,
  VFIO_DEVICE_FEATURE_MIGRATION,
  VFIO_DEVICE_FEATURE_PROBE,
  VFIO_DEVICE_FEATURE_SET,
  VFIO_DEVICE_RESET,
  VFIO_DEVICE_STATE_ERROR,
  VFIO_DEVICE_STATE_PRE_COPY,
  VFIO_DEVICE_STATE_PRE_COPY_P2P,
  VFIO_DEVICE_STATE_RESUMING,
  VFIO_DEVICE_STATE_RUNNING_P2P,
  VFIO_DEVICE_STATE_RUNNING,
  VFIO_DEVICE_STATE_STOP,
  VFIO_DEVICE_STATE_STOP_COPY,
  VFIO_MIG_GET_PRECOPY_INFO,
  VFIO_MIGRATION_P2P,
  VFIO_MIGRATION_PRE_COPY,
  VFIO_MIGRATION_STOP_COPY,
  VFIO_PRECOPY_INFO_REINIT,
} from "../../src/migration/uapi.js";
import type { MigrationDevice } from "../../src/migration/v2/migration-device.js";
import { expectCode, FEATURE_SETS, fillRandom, makeDevice, randomBytes, rng } from "./helpers.js";

const GET = VFIO_DEVICE_FEATURE_GET;
const SET = VFIO_DEVICE_FEATURE_SET;
const PROBE = VFIO_DEVICE_FEATURE_PROBE;

/** Little-endian struct bytes from (size, value) fields, as a C compiler lays them out. */
function struct(...fields: [4 | 8, number | bigint][]): Uint8Array {
  const size = fields.reduce((n, [s]) => n + s, 0);
  const out = new Uint8Array(size);
  const v = new DataView(out.buffer);
  let at = 0;
  for (const [s, value] of fields) {
    if (s === 4) v.setUint32(at, Number(value) >>> 0, true);
    else v.setBigUint64(at, BigInt(value), true);
    at += s;
  }
  return out;
}

function hex(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString("hex");
}

async function feature(file: VfioDeviceFile, arg: Uint8Array): Promise<Uint8Array> {
  expect(await file.ioctl(VFIO_DEVICE_FEATURE, arg)).toBe(0);
  return arg;
}

async function setState(file: VfioDeviceFile, state: number): Promise<number> {
  const arg = await feature(file, migStateSetArg(state));
  return readMigState(arg).dataFd;
}

describe("the uAPI numbers (include/uapi/linux/vfio.h)", () => {
  it("ioctls are _IO(';', 100 + n); feature bits and indices; states; flags", () => {
    expect([VFIO_DEVICE_FEATURE, VFIO_MIG_GET_PRECOPY_INFO, VFIO_DEVICE_RESET]).toEqual([(0x3b << 8) | 117, (0x3b << 8) | 121, (0x3b << 8) | 111]);
    expect([GET, SET, PROBE]).toEqual([0x10000, 0x20000, 0x40000]);
    expect([VFIO_DEVICE_FEATURE_MIGRATION, VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, VFIO_DEVICE_FEATURE_DMA_LOGGING_START]).toEqual([1, 2, 6]);
    expect([VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP, VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT, VFIO_DEVICE_FEATURE_MIG_DATA_SIZE]).toEqual([7, 8, 9]);
    expect(VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2).toBe(12);
    expect([VFIO_DEVICE_STATE_ERROR, VFIO_DEVICE_STATE_STOP, VFIO_DEVICE_STATE_RUNNING, VFIO_DEVICE_STATE_STOP_COPY, VFIO_DEVICE_STATE_RESUMING]).toEqual([
      0, 1, 2, 3, 4,
    ]);
    expect(VFIO_DEVICE_STATE_PRE_COPY).toBe(6);
    expect([VFIO_MIGRATION_STOP_COPY, VFIO_MIGRATION_P2P, VFIO_MIGRATION_PRE_COPY, VFIO_PRECOPY_INFO_REINIT]).toEqual([1, 2, 4, 1]);
  });
});

describe("golden struct bytes", () => {
  it("struct vfio_device_feature + vfio_device_feature_migration: GET fills flags", async () => {
    const device = makeDevice({ features: { p2p: true, precopy: true } });
    const arg = struct([4, 16], [4, GET | 1], [8, 0]);
    expect(hex(arg)).toBe("1000000001000100" + "0000000000000000");
    expect(hex(vfioFeatureArg(GET | VFIO_DEVICE_FEATURE_MIGRATION, 8))).toBe(hex(arg));
    await feature(openVfioDevice(device), arg);
    expect(hex(arg)).toBe("1000000001000100" + "0700000000000000");
    device.free();
  });

  it("struct vfio_device_feature_mig_state: SET returns data_fd in place; GET reports the state and -1", async () => {
    const device = makeDevice();
    const file = openVfioDevice(device, { firstFd: 9 });
    const set = struct([4, 16], [4, SET | 2], [4, VFIO_DEVICE_STATE_STOP_COPY], [4, 0xffffffff]);
    expect(hex(set)).toBe("1000000002000200" + "03000000ffffffff");
    expect(hex(migStateSetArg(VFIO_DEVICE_STATE_STOP_COPY))).toBe(hex(set));
    await feature(file, set);
    expect(hex(set)).toBe("1000000002000200" + "0300000009000000");
    const get = struct([4, 16], [4, GET | 2], [4, 0], [4, 0]);
    expect(hex(migStateGetArg())).toBe(hex(get));
    await feature(file, get);
    expect(hex(get)).toBe("1000000002000100" + "03000000ffffffff");
    device.free();
  });

  it("struct vfio_precopy_info on the data fd: initial_bytes and dirty_bytes at 8 and 16", async () => {
    const device = makeDevice();
    fillRandom(device, 11);
    const file = openVfioDevice(device);
    const fd = await setState(file, VFIO_DEVICE_STATE_PRE_COPY);
    const arg = struct([4, 24], [4, 0], [8, 0], [8, 0]);
    expect(hex(precopyInfoArg())).toBe(hex(arg));
    expect(await file.ioctl(VFIO_MIG_GET_PRECOPY_INFO, arg, fd)).toBe(0);
    const info = device.precopyInfo();
    expect(hex(arg)).toBe(hex(struct([4, 24], [4, 0], [8, info.initialBytes], [8, info.dirtyBytes])));
    expect(info.initialBytes).toBeGreaterThan(0);
    device.free();
  });

  it("DMA logging control with ranges inline after it (vfio-user's layout); page_size written back", async () => {
    const device = makeDevice({ dmaLogging: { minPageSize: 8192 } });
    const arg = struct([4, 8 + 16 + 32], [4, SET | 6], [8, 4096], [4, 2], [4, 0], [8, 0x10000], [8, 0x4000], [8, 2n ** 40n], [8, 0x2000]);
    expect(
      hex(
        dmaLoggingStartArg(4096, [
          { iova: 0x10000, length: 0x4000 },
          { iova: 2n ** 40n, length: 0x2000 },
        ]),
      ),
    ).toBe(hex(arg));
    await feature(openVfioDevice(device), arg);
    expect(readFeatureU64(arg)).toBe(8192n);
    expect(hex(arg.subarray(8, 16))).toBe("0020000000000000");
    device.free();
  });

  it("DMA logging report with the bitmap inline after it: u64 words, bit n = page n", async () => {
    const device = makeDevice();
    const file = openVfioDevice(device);
    await feature(file, dmaLoggingStartArg(4096, [{ iova: 2n ** 40n, length: 128 * 4096 }]));
    device.dmaWrite(2n ** 40n + 3n * 4096n, new Uint8Array(1));
    device.dmaWrite(2n ** 40n + 70n * 4096n, new Uint8Array(4097)); // pages 70 and 71
    const arg = struct([4, 8 + 24 + 16], [4, GET | 8], [8, 2n ** 40n], [8, 128 * 4096], [8, 4096], [8, 0], [8, 0]);
    expect(hex(dmaLoggingReportArg(2n ** 40n, 128 * 4096, 4096))).toBe(hex(arg));
    await feature(file, arg);
    expect(hex(reportBitmap(arg))).toBe(hex(struct([8, 1n << 3n], [8, (1n << 6n) | (1n << 7n)])));
    device.free();
  });

  it("MIG_DATA_SIZE: stop_copy_length is a u64 at data offset 0", async () => {
    const device = makeDevice();
    fillRandom(device, 3);
    const arg = struct([4, 16], [4, GET | 9], [8, 0]);
    await feature(openVfioDevice(device), arg);
    expect(readFeatureU64(arg)).toBe(BigInt(device.stopCopySize()));
    device.free();
  });
});

/** Reads a saving fd the way QEMU's save_live_iterate does: until ENOMSG (pre-copy) or 0 (end). */
async function readAll(file: VfioDeviceFile, fd: number, out: Uint8Array[], chunk: number): Promise<"eof" | "enomsg"> {
  for (;;) {
    let bytes: Uint8Array;
    try {
      bytes = await file.read(fd, chunk);
    } catch (error) {
      if ((error as { code?: string }).code === "ENOMSG") return "enomsg";
      throw error;
    }
    if (bytes.length === 0) return "eof";
    out.push(bytes.slice());
  }
}

async function writeAll(file: VfioDeviceFile, fd: number, stream: readonly Uint8Array[]): Promise<number> {
  let calls = 0;
  for (const chunk of stream) {
    let at = 0;
    while (at < chunk.length) {
      const n = await file.write(fd, chunk.subarray(at));
      expect(n).toBeGreaterThan(0);
      at += n;
      calls++;
    }
  }
  return calls;
}

/** The whole migration through bytes only: source and target MigrationDevices behind openVfioDevice. */
async function migrateThroughBytes(source: MigrationDevice, target: MigrationDevice, seed: number, chunk: number, maxWrite: number): Promise<void> {
  const src = openVfioDevice(source);
  const dst = openVfioDevice(target, { maxWrite });
  // PROBE, then GET the flags.
  expect(await src.ioctl(VFIO_DEVICE_FEATURE, vfioFeatureArg(PROBE | GET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE))).toBe(0);
  const flags = readFeatureU64(await feature(src, vfioFeatureArg(GET | VFIO_DEVICE_FEATURE_MIGRATION, 8)));
  expect(flags & BigInt(VFIO_MIGRATION_PRE_COPY)).not.toBe(0n);
  const stream: Uint8Array[] = [];
  const fd = await setState(src, VFIO_DEVICE_STATE_PRE_COPY);
  expect(fd).toBeGreaterThanOrEqual(3);
  const random = rng(seed);
  for (let round = 0; round < 3; round++) {
    const info = precopyInfoArg();
    expect(await src.ioctl(VFIO_MIG_GET_PRECOPY_INFO, info, fd)).toBe(0);
    const { initialBytes, dirtyBytes } = readPrecopyInfo(info);
    expect(await readAll(src, fd, stream, chunk)).toBe("enomsg");
    // Round 0 has the whole state to send; later rounds what the previous round's write dirtied.
    if (round === 0) expect(initialBytes).toBeGreaterThan(0n);
    else expect(dirtyBytes).toBeGreaterThan(0n);
    source.write("ram", Math.floor(random() * 30) * 4096, randomBytes(random, 5000));
  }
  expect(await setState(src, VFIO_DEVICE_STATE_STOP_COPY)).toBe(-1);
  expect(await readAll(src, fd, stream, chunk)).toBe("eof");
  expect((await src.read(fd, chunk)).length).toBe(0); // a permanent end
  await src.close(fd);
  expect(await setState(src, VFIO_DEVICE_STATE_STOP)).toBe(-1);

  await setState(dst, VFIO_DEVICE_STATE_STOP);
  const wfd = await setState(dst, VFIO_DEVICE_STATE_RESUMING);
  await writeAll(dst, wfd, stream);
  await dst.close(wfd);
  expect(await setState(dst, VFIO_DEVICE_STATE_STOP)).toBe(-1);
  expect(await setState(dst, VFIO_DEVICE_STATE_RUNNING)).toBe(-1);
  const get = await feature(dst, migStateGetArg());
  expect(readMigState(get)).toEqual({ deviceState: VFIO_DEVICE_STATE_RUNNING, dataFd: -1 });
}

describe("a full migration through ioctl / read / write", () => {
  it("PROBE, GET flags, SET PRE_COPY, PRECOPY_INFO, SET STOP_COPY, reads to 0, SET RESUMING, writes, SET STOP, SET RUNNING: equal digests", async () => {
    const source = makeDevice();
    const target = makeDevice();
    fillRandom(source, 21);
    await migrateThroughBytes(source, target, 22, 1 << 20, Number.MAX_SAFE_INTEGER);
    expect(target.model.digest()).toBe(source.model.digest());
    source.free();
    target.free();
  });

  it("any read size and any short-write bound give the same device (property, fixed seed)", async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 1, max: 70000 }), fc.integer({ min: 1, max: 9000 }), fc.integer(), async (chunk, maxWrite, seed) => {
        const source = makeDevice({ compress: seed % 2 === 0 ? "lz4" : "none" });
        const target = makeDevice();
        fillRandom(source, seed);
        await migrateThroughBytes(source, target, seed, chunk, maxWrite);
        expect(target.model.digest()).toBe(source.model.digest());
        source.free();
        target.free();
      }),
      { seed: 0x18, numRuns: 12 },
    );
  });

  it.each(FEATURE_SETS)("features $name: the flags GET reports decide the path, and the device arrives whole", async ({ features }) => {
    const source = makeDevice({ features });
    const target = makeDevice({ features });
    fillRandom(source, 77);
    const src = openVfioDevice(source);
    const dst = openVfioDevice(target);
    const flags = Number(readFeatureU64(await feature(src, vfioFeatureArg(GET | VFIO_DEVICE_FEATURE_MIGRATION, 8))));
    expect(flags).toBe(1 | (features.p2p ? VFIO_MIGRATION_P2P : 0) | (features.precopy ? VFIO_MIGRATION_PRE_COPY : 0));
    const stream: Uint8Array[] = [];
    let fd: number;
    if ((flags & VFIO_MIGRATION_PRE_COPY) !== 0) {
      // QEMU's order with P2P: PRE_COPY_P2P before STOP_COPY (the prepare step).
      fd = await setState(src, (flags & VFIO_MIGRATION_P2P) !== 0 ? VFIO_DEVICE_STATE_PRE_COPY_P2P : VFIO_DEVICE_STATE_PRE_COPY);
      expect(await readAll(src, fd, stream, 65536)).toBe("enomsg");
      expect(await setState(src, VFIO_DEVICE_STATE_STOP_COPY)).toBe(-1);
    } else {
      if ((flags & VFIO_MIGRATION_P2P) !== 0) expect(await setState(src, VFIO_DEVICE_STATE_RUNNING_P2P)).toBe(-1);
      fd = await setState(src, VFIO_DEVICE_STATE_STOP_COPY);
    }
    expect(await readAll(src, fd, stream, 65536)).toBe("eof");
    const wfd = await setState(dst, VFIO_DEVICE_STATE_RESUMING);
    await writeAll(dst, wfd, stream);
    expect(await setState(dst, VFIO_DEVICE_STATE_RUNNING)).toBe(-1);
    expect(target.model.digest()).toBe(source.model.digest());
    source.free();
    target.free();
  });

  it("write(2) may be short: at most maxWrite bytes are taken per call", async () => {
    const source = makeDevice();
    const src = openVfioDevice(source);
    const stream = await src.read(await setState(src, VFIO_DEVICE_STATE_STOP_COPY), 100);
    const target = makeDevice();
    const file = openVfioDevice(target, { maxWrite: 7 });
    await setState(file, VFIO_DEVICE_STATE_STOP);
    const fd = await setState(file, VFIO_DEVICE_STATE_RESUMING);
    expect(await file.write(fd, stream)).toBe(7);
    expect(await file.write(fd, stream.subarray(7, 10))).toBe(3);
    expect(await file.write(fd, new Uint8Array(0))).toBe(0);
    source.free();
    target.free();
  });
});

describe("errno of VFIO_DEVICE_FEATURE (vfio_ioctl_device_feature, vfio_check_feature)", () => {
  const withFile = async (fn: (file: VfioDeviceFile, device: MigrationDevice) => Promise<void>, options = {}) => {
    const device = makeDevice(options);
    try {
      await fn(openVfioDevice(device), device);
    } finally {
      device.free();
    }
  };

  it("'feature.argsz < minsz': argsz below 8 is EINVAL", async () => {
    await withFile(async (file) => {
      const arg = vfioFeatureArg(GET | 1, 8);
      new DataView(arg.buffer).setUint32(0, 7, true);
      await expectCode(() => file.ioctl(VFIO_DEVICE_FEATURE, arg), "EINVAL");
    });
  });

  it("'Check unknown flags': a flag bit past PROBE is EINVAL", async () => {
    await withFile(async (file) => {
      await expectCode(() => file.ioctl(VFIO_DEVICE_FEATURE, vfioFeatureArg((1 << 19) | GET | 1, 8)), "EINVAL");
    });
  });

  it("'GET & SET are mutually exclusive except with PROBE': EINVAL, and with PROBE it succeeds", async () => {
    await withFile(async (file) => {
      await expectCode(() => file.ioctl(VFIO_DEVICE_FEATURE, vfioFeatureArg(GET | SET | 2, 8)), "EINVAL");
      expect(await file.ioctl(VFIO_DEVICE_FEATURE, vfioFeatureArg(PROBE | GET | SET | 2))).toBe(0);
    });
  });

  it("an unknown feature index is ENOTTY", async () => {
    await withFile(async (file) => {
      await expectCode(() => file.ioctl(VFIO_DEVICE_FEATURE, vfioFeatureArg(GET | 3, 8)), "ENOTTY");
      await expectCode(() => file.ioctl(VFIO_DEVICE_FEATURE, vfioFeatureArg(PROBE | 0xffff)), "ENOTTY");
    });
  });

  it("an ioctl that is not a device ioctl is ENOTTY", async () => {
    await withFile(async (file) => {
      await expectCode(() => file.ioctl(0x3b6a, new Uint8Array(16)), "ENOTTY");
      await expectCode(() => file.ioctl(VFIO_MIG_GET_PRECOPY_INFO, precopyInfoArg()), "ENOTTY");
    });
  });

  it("'supported_ops': a SET of a GET-only feature is EINVAL, also as a PROBE", async () => {
    await withFile(async (file) => {
      await expectCode(() => file.ioctl(VFIO_DEVICE_FEATURE, vfioFeatureArg(SET | 1, 8)), "EINVAL");
      await expectCode(() => file.ioctl(VFIO_DEVICE_FEATURE, vfioFeatureArg(PROBE | SET | 9)), "EINVAL");
      await expectCode(() => file.ioctl(VFIO_DEVICE_FEATURE, vfioFeatureArg(GET | 6, 16)), "EINVAL");
    });
  });

  it("'Without PROBE one of GET or SET must be requested': neither is EINVAL", async () => {
    await withFile(async (file) => {
      await expectCode(() => file.ioctl(VFIO_DEVICE_FEATURE, vfioFeatureArg(2, 8)), "EINVAL");
    });
  });

  it("a PROBE needs no data and touches none", async () => {
    await withFile(async (file) => {
      for (const f of [1, 2, 6, 7, 8, 9, 12]) expect(await file.ioctl(VFIO_DEVICE_FEATURE, vfioFeatureArg(PROBE | f))).toBe(0);
      const arg = vfioFeatureArg(PROBE | GET | 1, 8);
      arg.fill(0xee, 8);
      await file.ioctl(VFIO_DEVICE_FEATURE, arg);
      expect(hex(arg.subarray(8))).toBe("eeeeeeeeeeeeeeee");
    });
  });

  it("'argsz < minsz' for the data: a GET whose argsz leaves no room for the struct is EINVAL", async () => {
    await withFile(async (file) => {
      await expectCode(() => file.ioctl(VFIO_DEVICE_FEATURE, vfioFeatureArg(GET | 1, 7)), "EINVAL");
      await expectCode(() => file.ioctl(VFIO_DEVICE_FEATURE, vfioFeatureArg(SET | 2, 4)), "EINVAL");
      await expectCode(() => file.ioctl(VFIO_DEVICE_FEATURE, vfioFeatureArg(GET | 9, 0)), "EINVAL");
    });
  });

  it("an argsz larger than the bytes given is EFAULT where the struct would be read", async () => {
    await withFile(async (file) => {
      const arg = vfioFeatureArg(GET | 1, 4);
      new DataView(arg.buffer).setUint32(0, 16, true);
      await expectCode(() => file.ioctl(VFIO_DEVICE_FEATURE, arg), "EFAULT");
      await expectCode(() => file.ioctl(VFIO_DEVICE_FEATURE, new Uint8Array(4)), "EFAULT");
    });
  });

  it("SET of a state number outside 0..7 is EINVAL, data_fd -1 and device_state left as requested", async () => {
    await withFile(async (file) => {
      const arg = migStateSetArg(0xabcd);
      new DataView(arg.buffer).setInt32(12, 77, true);
      await expectCode(() => file.ioctl(VFIO_DEVICE_FEATURE, arg), "EINVAL");
      expect(readMigState(arg)).toEqual({ deviceState: 0xabcd, dataFd: -1 });
    });
  });

  it("'ERROR cannot be specified as a device state': SET ERROR is EINVAL", async () => {
    await withFile(async (file) => {
      await expectCode(() => file.ioctl(VFIO_DEVICE_FEATURE, migStateSetArg(VFIO_DEVICE_STATE_ERROR)), "EINVAL");
    });
  });

  it("'STOP_COPY -> PRE_COPY ... not permitted and return error'", async () => {
    await withFile(async (file) => {
      await setState(file, VFIO_DEVICE_STATE_STOP_COPY);
      await expectCode(() => file.ioctl(VFIO_DEVICE_FEATURE, migStateSetArg(VFIO_DEVICE_STATE_PRE_COPY)), "EINVAL");
      const get = await feature(file, migStateGetArg());
      expect(readMigState(get).deviceState).toBe(VFIO_DEVICE_STATE_STOP_COPY);
    });
  });

  it("an optional state the device does not offer is EINVAL", async () => {
    await withFile(
      async (file) => {
        await expectCode(() => file.ioctl(VFIO_DEVICE_FEATURE, migStateSetArg(VFIO_DEVICE_STATE_PRE_COPY)), "EINVAL");
      },
      { features: { p2p: false, precopy: false } },
    );
  });

  it("MIGRATION flags follow the features: STOP_COPY only", async () => {
    await withFile(
      async (file) => {
        expect(readFeatureU64(await feature(file, vfioFeatureArg(GET | 1, 8)))).toBe(1n);
      },
      { features: { p2p: false, precopy: false } },
    );
  });

  it("'num_ranges == 0': DMA_LOGGING_START with no ranges is EINVAL", async () => {
    await withFile(async (file) => {
      await expectCode(() => file.ioctl(VFIO_DEVICE_FEATURE, dmaLoggingStartArg(4096, [])), "EINVAL");
    });
  });

  it("'num_ranges > LOG_MAX_RANGES': 257 ranges is E2BIG", async () => {
    await withFile(async (file) => {
      const arg = dmaLoggingStartArg(4096, [{ iova: 0, length: 4096 }]);
      new DataView(arg.buffer).setUint32(16, 257, true);
      await expectCode(() => file.ioctl(VFIO_DEVICE_FEATURE, arg), "E2BIG");
    });
  });

  it("DMA_LOGGING_START whose argsz does not cover num_ranges inline ranges is EINVAL", async () => {
    await withFile(async (file) => {
      const arg = dmaLoggingStartArg(4096, [{ iova: 0, length: 4096 }]);
      new DataView(arg.buffer).setUint32(16, 2, true);
      await expectCode(() => file.ioctl(VFIO_DEVICE_FEATURE, arg), "EINVAL");
    });
  });

  it("'Range overlapping': overlapping ranges are EINVAL", async () => {
    await withFile(async (file) => {
      const arg = dmaLoggingStartArg(4096, [
        { iova: 0, length: 3 * 4096 },
        { iova: 2 * 4096, length: 4096 },
      ]);
      await expectCode(() => file.ioctl(VFIO_DEVICE_FEATURE, arg), "EINVAL");
    });
  });

  it("'!IS_ALIGNED(range.iova, control.page_size)': an unaligned range is EINVAL", async () => {
    await withFile(async (file) => {
      await expectCode(() => file.ioctl(VFIO_DEVICE_FEATURE, dmaLoggingStartArg(4096, [{ iova: 100, length: 4096 }])), "EINVAL");
    });
  });

  it("'check_add_overflow(range.iova, range.length)': a range past 2^64 - 1 is EOVERFLOW", async () => {
    await withFile(async (file) => {
      const arg = dmaLoggingStartArg(4096, [{ iova: 2n ** 64n - 4096n, length: 4096 }]);
      await expectCode(() => file.ioctl(VFIO_DEVICE_FEATURE, arg), "EOVERFLOW");
    });
  });

  it("DMA_LOGGING_REPORT whose argsz leaves no room for the bitmap is EINVAL", async () => {
    await withFile(async (file) => {
      await feature(file, dmaLoggingStartArg(4096, [{ iova: 0, length: 128 * 4096 }]));
      const arg = dmaLoggingReportArg(0, 128 * 4096, 4096);
      new DataView(arg.buffer).setUint32(0, arg.length - 8, true);
      await expectCode(() => file.ioctl(VFIO_DEVICE_FEATURE, arg), "EINVAL");
    });
  });

  it("a report with no logging session is EINVAL; STOP with none is fine", async () => {
    await withFile(async (file) => {
      await expectCode(() => file.ioctl(VFIO_DEVICE_FEATURE, dmaLoggingReportArg(0, 4096, 4096)), "EINVAL");
      expect(await file.ioctl(VFIO_DEVICE_FEATURE, vfioFeatureArg(SET | 7))).toBe(0);
    });
  });

  it("'if (!device->log_ops) return -ENOTTY': a device without DMA logging answers ENOTTY", async () => {
    const device = makeDevice();
    const file = openVfioDevice(device, { dmaLogging: false });
    for (const f of [6, 7, 8]) await expectCode(() => file.ioctl(VFIO_DEVICE_FEATURE, vfioFeatureArg(PROBE | f)), "ENOTTY");
    device.free();
  });

  it("PRECOPY_INFOv2 is SET only (GET is EINVAL) and ENOTTY without PRE_COPY", async () => {
    await withFile(async (file) => {
      await expectCode(() => file.ioctl(VFIO_DEVICE_FEATURE, vfioFeatureArg(GET | 12)), "EINVAL");
    });
    await withFile(
      async (file) => {
        await expectCode(() => file.ioctl(VFIO_DEVICE_FEATURE, vfioFeatureArg(SET | 12)), "ENOTTY");
      },
      { features: { p2p: true, precopy: false } },
    );
  });

  it("VFIO_DEVICE_RESET: back to RUNNING, the data fd's session ends", async () => {
    await withFile(async (file, device) => {
      const fd = await setState(file, VFIO_DEVICE_STATE_STOP_COPY);
      expect(await file.ioctl(VFIO_DEVICE_RESET, new Uint8Array(0))).toBe(0);
      expect(device.state).toBe("RUNNING");
      await expectCode(() => file.read(fd, 10), "ENODEV");
    });
  });
});

describe("errno on the data fds", () => {
  it("PRECOPY_INFO: argsz below 24 is EINVAL; outside PRE_COPY EINVAL; another ioctl ENOTTY; unknown fd EBADF", async () => {
    const device = makeDevice();
    const file = openVfioDevice(device);
    const fd = await setState(file, VFIO_DEVICE_STATE_PRE_COPY);
    const short = precopyInfoArg();
    new DataView(short.buffer).setUint32(0, 16, true);
    await expectCode(() => file.ioctl(VFIO_MIG_GET_PRECOPY_INFO, short, fd), "EINVAL");
    await expectCode(() => file.ioctl(VFIO_MIG_GET_PRECOPY_INFO, new Uint8Array(16), fd), "EFAULT");
    await expectCode(() => file.ioctl(VFIO_DEVICE_FEATURE, precopyInfoArg(), fd), "ENOTTY");
    await expectCode(() => file.ioctl(VFIO_MIG_GET_PRECOPY_INFO, precopyInfoArg(), fd + 1), "EBADF");
    await setState(file, VFIO_DEVICE_STATE_STOP_COPY);
    await expectCode(() => file.ioctl(VFIO_MIG_GET_PRECOPY_INFO, precopyInfoArg(), fd), "EINVAL");
    device.free();
  });

  it("without PRECOPY_INFOv2 the flags word is the caller's (the kernel echoes it); with it, REINIT", async () => {
    const device = makeDevice();
    fillRandom(device, 5);
    const file = openVfioDevice(device);
    const fd = await setState(file, VFIO_DEVICE_STATE_PRE_COPY);
    const arg = precopyInfoArg();
    new DataView(arg.buffer).setUint32(4, 0x55, true);
    await file.ioctl(VFIO_MIG_GET_PRECOPY_INFO, arg, fd);
    expect(readPrecopyInfo(arg).flags).toBe(0x55);
    await feature(file, vfioFeatureArg(SET | VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2));
    device.reinitialize();
    const v2 = precopyInfoArg();
    new DataView(v2.buffer).setUint32(4, 0x55, true);
    await file.ioctl(VFIO_MIG_GET_PRECOPY_INFO, v2, fd);
    expect(readPrecopyInfo(v2).flags).toBe(VFIO_PRECOPY_INFO_REINIT);
    const again = precopyInfoArg();
    await file.ioctl(VFIO_MIG_GET_PRECOPY_INFO, again, fd);
    expect(readPrecopyInfo(again).flags).toBe(0);
    device.free();
  });

  it("'read() should fail with ENOMSG' in PRE_COPY when nothing is ready; 'read() always returning 0' at the end of STOP_COPY", async () => {
    const device = makeDevice();
    const file = openVfioDevice(device);
    const fd = await setState(file, VFIO_DEVICE_STATE_PRE_COPY);
    const out: Uint8Array[] = [];
    expect(await readAll(file, fd, out, 4096)).toBe("enomsg");
    await expectCode(() => file.read(fd, 4096), "ENOMSG");
    await setState(file, VFIO_DEVICE_STATE_STOP_COPY);
    expect(await readAll(file, fd, out, 4096)).toBe("eof");
    expect((await file.read(fd, 4096)).length).toBe(0);
    expect((await file.read(fd, 4096)).length).toBe(0);
    device.free();
  });

  it("a saving fd is read only and a resuming fd write only: the other direction is EBADF", async () => {
    const device = makeDevice();
    const file = openVfioDevice(device);
    const rfd = await setState(file, VFIO_DEVICE_STATE_STOP_COPY);
    await expectCode(() => file.write(rfd, new Uint8Array(1)), "EBADF");
    await setState(file, VFIO_DEVICE_STATE_STOP);
    const wfd = await setState(file, VFIO_DEVICE_STATE_RESUMING);
    await expectCode(() => file.read(wfd, 1), "EBADF");
    await expectCode(() => file.ioctl(VFIO_MIG_GET_PRECOPY_INFO, precopyInfoArg(), wfd), "ENOTTY");
    device.free();
  });

  it("a closed fd is EBADF for read, write, ioctl and close", async () => {
    const device = makeDevice();
    const file = openVfioDevice(device);
    const fd = await setState(file, VFIO_DEVICE_STATE_STOP_COPY);
    await file.close(fd);
    await expectCode(() => file.read(fd, 1), "EBADF");
    await expectCode(() => file.write(fd, new Uint8Array(1)), "EBADF");
    await expectCode(() => file.ioctl(VFIO_MIG_GET_PRECOPY_INFO, precopyInfoArg(), fd), "EBADF");
    await expectCode(() => file.close(fd), "EBADF");
    device.free();
  });

  /** A source saved through STOP_COPY (fd still open) and a target opened in RESUMING. */
  async function savedAndResuming(seed: number) {
    const source = makeDevice();
    fillRandom(source, seed);
    const src = openVfioDevice(source);
    const fd = await setState(src, VFIO_DEVICE_STATE_STOP_COPY);
    const stream: Uint8Array[] = [];
    await readAll(src, fd, stream, 1 << 20);
    const target = makeDevice();
    const dst = openVfioDevice(target);
    await setState(dst, VFIO_DEVICE_STATE_STOP);
    const wfd = await setState(dst, VFIO_DEVICE_STATE_RESUMING);
    const free = () => {
      source.free();
      target.free();
    };
    return { source, src, fd, stream, target, dst, wfd, free };
  }

  it("'a data fd used after its session ended is ENODEV' (mlx5, hisi): saving after STOP, resuming after leaving RESUMING", async () => {
    const { source, src, fd, stream, target, dst, wfd, free } = await savedAndResuming(8);
    await setState(src, VFIO_DEVICE_STATE_STOP);
    await expectCode(() => src.read(fd, 1), "ENODEV");
    await expectCode(() => src.ioctl(VFIO_MIG_GET_PRECOPY_INFO, precopyInfoArg(), fd), "ENODEV");
    for (const chunk of stream) await dst.write(wfd, chunk);
    await setState(dst, VFIO_DEVICE_STATE_STOP);
    await expectCode(() => dst.write(wfd, new Uint8Array(1)), "ENODEV");
    expect(target.model.digest()).toBe(source.model.digest());
    free();
  });

  it("'closing a RESUMING fd does not abort the resume' (QEMU's load_cleanup closes it before RESUMING is left)", async () => {
    const { source, stream, target, dst, wfd, free } = await savedAndResuming(9);
    for (const chunk of stream) await dst.write(wfd, chunk);
    await dst.close(wfd);
    expect(target.state).toBe("RESUMING");
    await setState(dst, VFIO_DEVICE_STATE_RUNNING);
    expect(target.model.digest()).toBe(source.model.digest());
    free();
  });

  it("a stream cut short fails when RESUMING is left, not at close", async () => {
    const { stream, target, dst, wfd, free } = await savedAndResuming(10);
    await dst.write(wfd, stream[0]!.subarray(0, 100));
    await dst.close(wfd);
    await expectCode(() => dst.ioctl(VFIO_DEVICE_FEATURE, migStateSetArg(VFIO_DEVICE_STATE_STOP)), "ENODATA");
    expect(target.state).toBe("ERROR");
    free();
  });
});

describe("hostile arguments", () => {
  it("any bytes as an ioctl argument give 0 or a MigrationError, and the device stays usable (property, fixed seed)", async () => {
    const device = makeDevice();
    fillRandom(device, 90);
    const file = openVfioDevice(device);
    const requests = [VFIO_DEVICE_FEATURE, VFIO_DEVICE_RESET, VFIO_MIG_GET_PRECOPY_INFO, 0x3b70];
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...requests),
        fc.integer({ min: 0, max: 12 }),
        fc.integer({ min: 0, max: 7 }),
        fc.uint8Array({ maxLength: 120 }),
        fc.option(fc.integer({ min: -1, max: 8 }), { nil: undefined }),
        async (request, featureIndex, ops, tail, fd) => {
          // Mostly well-formed headers with any data after them, sometimes garbage throughout.
          const arg = new Uint8Array(8 + tail.length);
          const view = new DataView(arg.buffer);
          view.setUint32(0, tail.length % 3 === 0 ? tail.length * 1000 : 8 + tail.length, true);
          view.setUint32(4, featureIndex | (ops << 16), true);
          arg.set(tail, 8);
          try {
            expect(await file.ioctl(request, arg, fd)).toBe(0);
          } catch (error) {
            expect(error).toBeInstanceOf(MigrationError);
          }
          // Whatever happened, GET answers and a reset brings the device back.
          const get = migStateGetArg();
          await file.ioctl(VFIO_DEVICE_FEATURE, get);
          expect(readMigState(get).deviceState).toBeLessThan(8);
          if (readMigState(get).deviceState === VFIO_DEVICE_STATE_RESUMING || readMigState(get).deviceState === VFIO_DEVICE_STATE_ERROR) device.reset();
        },
      ),
      { seed: 0x5eed, numRuns: 400 },
    );
    device.free();
  });
});
