import { fc, test } from "@fast-check/vitest";
import { afterEach, describe, expect, it } from "vitest";
import { isCorruptionCode, MigrationError, type MigrationErrorCode } from "../../src/core/errors.js";
import { ResumingSession } from "../../src/migration/resuming-session.js";
import { SavingSession } from "../../src/migration/saving-session.js";
import { classifyDeviceState, deviceStateName } from "../../src/migration/v1/device-state.js";
import {
  DATA_WINDOW_OFFSET,
  MigrationRegion,
  REG_DATA_OFFSET,
  REG_DATA_SIZE,
  REG_DEVICE_STATE,
  REG_PENDING_BYTES,
  REG_RESERVED,
} from "../../src/migration/v1/migration-region.js";
import { type DeviceCallbacks, MigrationDevice } from "../../src/migration/v2/migration-device.js";
import type { MigrationState } from "../../src/migration/v2/states.js";
import { concatBytes } from "../../src/core/bytes.js";

// --- helpers ------------------------------------------------------------------------------------

const REGIONS = [
  { name: "ram", size: 48 * 1024 },
  { name: "regs", size: 4096 + 100 },
  { name: "vram", size: 20_000 },
];
const PAGE = 1024;
/**
 * Large enough that pre-copy hands out data: the saving session only sees encoder output once
 * 1 MiB of it has accumulated (StreamEncoder.endRound does not drain; see the report).
 */
const BIG = [
  { name: "ram", size: 2 << 20 },
  { name: "regs", size: 4096 + 100 },
  { name: "vram", size: 700_000 },
];

/** Deterministic bytes (mulberry32), so failures reproduce. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
function randomBytes(rand: () => number, n: number): Uint8Array {
  const words = new Uint32Array(Math.ceil(n / 4));
  for (let i = 0; i < words.length; i++) words[i] = rand() * 4294967296;
  return new Uint8Array(words.buffer, 0, n);
}

interface Setup {
  ndma?: boolean;
  windowSize?: number;
  callbacks?: DeviceCallbacks;
  quiesceTimeoutMs?: number;
  regions?: { name: string; size: number }[];
}

const created: MigrationRegion[] = [];
afterEach(() => {
  for (const r of created.splice(0)) r.device.free();
});

function makeRegion(setup: Setup = {}): MigrationRegion {
  const region = MigrationRegion.create({
    regions: setup.regions ?? REGIONS,
    pageSize: PAGE,
    ndma: setup.ndma ?? true,
    ...(setup.windowSize !== undefined ? { windowSize: setup.windowSize } : {}),
    ...(setup.callbacks !== undefined ? { callbacks: setup.callbacks } : {}),
    ...(setup.quiesceTimeoutMs !== undefined ? { quiesceTimeoutMs: setup.quiesceTimeoutMs } : {}),
  });
  created.push(region);
  return region;
}

function fill(region: MigrationRegion, seed: number): void {
  const rand = prng(seed);
  for (const r of region.device.model.regions) region.device.write(r.name, 0, randomBytes(rand, r.size));
}

const readState = (r: MigrationRegion): number => r.readRegister(REG_DEVICE_STATE, 4);
const writeState = (r: MigrationRegion, v: number): Promise<void> => r.writeRegister(REG_DEVICE_STATE, 4, v);

async function rejection(p: Promise<unknown>): Promise<MigrationError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(MigrationError);
    return e as MigrationError;
  }
  throw new Error("expected a rejection");
}
function thrown(f: () => unknown): MigrationError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(MigrationError);
    return e as MigrationError;
  }
  throw new Error("expected a throw");
}
async function expectCode(p: Promise<unknown>, code: MigrationErrorCode): Promise<MigrationError> {
  const e = await rejection(p);
  expect(e.code, e.message).toBe(code);
  return e;
}
function expectThrowCode(f: () => unknown, code: MigrationErrorCode): MigrationError {
  const e = thrown(f);
  expect(e.code, e.message).toBe(code);
  return e;
}

/** The v2 state a device_state value stands for (6: ERROR). */
function v2Of(value: number): MigrationState {
  const v2 = classifyDeviceState(value).v2;
  if (v2 === undefined) throw new Error(`no v2 state for ${value}`);
  return v2;
}

/** The register and the device agree, and the session matches the state. */
function expectConsistent(region: MigrationRegion, value: number): void {
  expect(deviceStateName(readState(region))).toBe(deviceStateName(value));
  expect(region.device.state).toBe(v2Of(value));
  const session = region.device.session;
  if ((value & 4) !== 0 && value !== 6) expect(session).toBeInstanceOf(ResumingSession);
  else if ((value & 2) !== 0 && value !== 6) expect(session).toBeInstanceOf(SavingSession);
  else expect(session).toBeUndefined();
}

/** One burst of the v1 save loop (1.4): iterate until pending_bytes reads 0. */
function drain(region: MigrationRegion, out: Uint8Array[]): number {
  let segments = 0;
  for (;;) {
    const pending = region.readRegister(REG_PENDING_BYTES, 8);
    expect(region.readRegister(REG_PENDING_BYTES, 8) === 0n).toBe(pending === 0n); // re-read: no side effect
    if (pending === 0n) return segments;
    const offset = Number(region.readRegister(REG_DATA_OFFSET, 8));
    const size = Number(region.readRegister(REG_DATA_SIZE, 8));
    expect(offset).toBe(DATA_WINDOW_OFFSET);
    expect(Number(region.readRegister(REG_DATA_OFFSET, 8))).toBe(offset); // invariant within an iteration
    expect(size).toBeGreaterThan(0);
    expect(size).toBeLessThanOrEqual(region.windowSize);
    // The segment need not be read in one operation (RFC, 1.4 d).
    const half = Math.floor(size / 2);
    const a = region.readData(offset, half);
    const b = region.readData(offset + half, size - half);
    const segment = new Uint8Array(size);
    segment.set(a);
    segment.set(b, half);
    out.push(segment);
    segments++;
  }
}

const concat = concatBytes;

/** The v1 resume loop (1.5): data_offset, data, data_size per segment. */
async function feed(region: MigrationRegion, segments: readonly Uint8Array[]): Promise<void> {
  for (const s of segments) {
    const offset = Number(region.readRegister(REG_DATA_OFFSET, 8));
    region.writeData(offset, s);
    await region.writeRegister(REG_DATA_SIZE, 8, BigInt(s.length));
    expect(region.readRegister(REG_DATA_SIZE, 8)).toBe(BigInt(s.length));
  }
}

function rechunk(stream: Uint8Array, sizes: () => number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let at = 0; at < stream.length; ) {
    const n = Math.min(stream.length - at, sizes());
    out.push(stream.subarray(at, at + n));
    at += n;
  }
  return out;
}

/** A full v1 save of a filled source: pre-copy rounds with workload writes, then stop-and-copy. */
async function saveV1(source: MigrationRegion, seed: number): Promise<{ segments: Uint8Array[]; precopySegments: number }> {
  const rand = prng(seed);
  const segments: Uint8Array[] = [];
  await writeState(source, 3);
  let precopySegments = 0;
  for (let round = 0; round < 3; round++) {
    precopySegments += drain(source, segments);
    expect(source.readRegister(REG_PENDING_BYTES, 8)).toBe(0n); // pre-copy: nothing for now
    // Workload between iterations: the device is still running in pre-copy.
    for (let i = 0; i < 5; i++) {
      const r = source.device.model.regions[Math.floor(rand() * 3)]!;
      const at = Math.floor(rand() * (r.size - 64));
      source.device.write(r.name, at, randomBytes(rand, 64));
    }
  }
  await writeState(source, source.ndma ? 0xb : 3);
  await writeState(source, source.ndma ? 0xa : 2);
  drain(source, segments);
  expect(source.readRegister(REG_PENDING_BYTES, 8)).toBe(0n); // stop-and-copy: complete, stays 0
  await writeState(source, 0);
  return { segments, precopySegments };
}

/** A valid stream of a freshly filled device with layout `regions` (for entering/leaving RESUMING). */
async function validStream(regions = REGIONS, seed = 7): Promise<Uint8Array> {
  const src = makeRegion({ regions, windowSize: 4096 });
  fill(src, seed);
  await writeState(src, 2);
  const out: Uint8Array[] = [];
  drain(src, out);
  await writeState(src, 0);
  return concat(out);
}

// --- device_state: the 16 values from every state -----------------------------------------------

/** Accept ('Y') / refuse ('.') of writes 0x0..0xF per source state (reference 1.7 + device-state.ts). */
// Every valid value from every valid state (see device-state.ts); the error state takes none.
const WITH_NDMA: ReadonlyArray<readonly [number, string]> = [
  ...[0x0, 0x1, 0x2, 0x3, 0x4, 0x8, 0x9, 0xa, 0xb, 0xc].map((s) => [s, "YYYYY...YYYYY..."] as const),
  [0x6, "................"],
];
const WITHOUT_NDMA: ReadonlyArray<readonly [number, string]> = [
  ...[0x0, 0x1, 0x2, 0x3, 0x4].map((s) => [s, "YYYYY..........."] as const),
  [0x6, "................"],
];

/** Drives a fresh region from RUNNING to `source` through the v1 interface only. */
async function driveTo(region: MigrationRegion, source: number, stream: Uint8Array): Promise<void> {
  if (source === 6) {
    await writeState(region, 4);
    const e = await rejection(writeState(region, 1)); // empty stream: validation fails
    expect(isCorruptionCode(e.code), e.message).toBe(true);
  } else if (source !== 1) {
    await writeState(region, source);
  }
  if ((source & 4) !== 0 && source !== 6)
    await feed(
      region,
      rechunk(stream, () => 3000),
    );
  expectConsistent(region, source);
}

describe("device_state writes: every value from every state", () => {
  for (const [ndma, rows] of [
    [true, WITH_NDMA],
    [false, WITHOUT_NDMA],
  ] as const) {
    it.each(rows.map(([s, e]) => [deviceStateName(s), s, e] as const))(`NDMA ${ndma ? "advertised" : "absent"}: from %s`, async (_n, source, expected) => {
      const stream = await validStream();
      for (let v = 0; v < 16; v++) {
        const region = makeRegion({ ndma });
        await driveTo(region, source, stream);
        const label = `${deviceStateName(source)} <- ${deviceStateName(v)}`;
        if (expected[v] === "Y") {
          await writeState(region, v);
          expectConsistent(region, v);
        } else {
          const e = await expectCode(writeState(region, v), "EINVAL");
          expect(e.message, label).toContain(deviceStateName(v));
          expectConsistent(region, source);
        }
        region.device.free();
        created.splice(created.indexOf(region), 1);
      }
    });
  }

  it("refuses reserved bits, non-u32 values and NDMA when not advertised, changing nothing", async () => {
    for (const ndma of [true, false]) {
      const region = makeRegion({ ndma });
      for (const v of [0x11, 0x10, 0x80000001, 0xffffffff, 0x100 | 3]) {
        await expectCode(writeState(region, v), "EINVAL");
        expectConsistent(region, 1);
      }
      for (const v of [-1, 1.5, Number.NaN, 2 ** 32]) await expectCode(writeState(region, v), "EINVAL");
      await expectCode(region.writeRegister(REG_DEVICE_STATE, 4, 1n as unknown as number), "EINVAL");
      if (!ndma) {
        const e = await expectCode(writeState(region, 9), "EINVAL");
        expect(e.message).toMatch(/NDMA/);
      }
      expectConsistent(region, 1);
    }
  });

  it("reads RUNNING after reset from any state, the error state included", async () => {
    const stream = await validStream();
    for (const s of [0, 2, 3, 4, 6, 9, 0xb]) {
      const region = makeRegion();
      await driveTo(region, s, stream);
      region.reset();
      expectConsistent(region, 1);
    }
  });

  it("checks the device it wraps", () => {
    const device = new MigrationDevice({ regions: REGIONS, features: { p2p: true, precopy: false } });
    try {
      expectThrowCode(() => new MigrationRegion(device), "EINVAL");
      const p2p = new MigrationDevice({ regions: REGIONS, features: { p2p: true, precopy: true } });
      expectThrowCode(() => new MigrationRegion(p2p, { ndma: false }), "EINVAL");
      expectThrowCode(() => new MigrationRegion(p2p, { windowSize: 0 }), "EINVAL");
      expect(new MigrationRegion(p2p).ndma).toBe(true);
      p2p.free();
    } finally {
      device.free();
    }
  });
});

// --- callback failures ----------------------------------------------------------------------------

describe("failed device_state writes", () => {
  it("saveConfig EIO from RUNNING: the code propagates, device_state stays RUNNING", async () => {
    let fail = true;
    const region = makeRegion({
      callbacks: {
        saveConfig: () => {
          if (fail) throw new MigrationError("EIO", "config read failed");
          return new Uint8Array([1, 2, 3]);
        },
      },
    });
    for (const v of [2, 0xa]) {
      const e = await expectCode(writeState(region, v), "EIO");
      expect(e.from).toBe("_RUNNING");
      expect(e.state).toBe("_RUNNING");
      expectConsistent(region, 1);
    }
    fail = false;
    await writeState(region, 2);
    expectConsistent(region, 2);
  });

  it("saveConfig failing in pre-copy keeps the same saving session; the stream still resumes", async () => {
    for (const ndma of [true, false]) {
      let fail = true;
      const source = makeRegion({
        ndma,
        windowSize: 8192,
        callbacks: {
          saveConfig: () => {
            if (fail) throw new Error("not now"); // a plain Error becomes EIO
            return new Uint8Array([7, 7]);
          },
        },
      });
      fill(source, 11);
      await writeState(source, 3);
      const session = source.device.session;
      const segments: Uint8Array[] = [];
      // Stop part way through an iteration: pending_bytes pulled a segment, not staged yet.
      expect(source.readRegister(REG_PENDING_BYTES, 8)).toBeGreaterThan(0n);
      await expectCode(writeState(source, 2), "EIO");
      expectConsistent(source, 3);
      expect(source.device.session).toBe(session);
      fail = false;
      await writeState(source, 2);
      drain(source, segments);
      await writeState(source, 0);
      const target = makeRegion({ ndma });
      await writeState(target, 4);
      await feed(target, segments);
      await writeState(target, 1);
      expect(target.device.model.digest()).toBe(source.device.model.digest());
    }
  });

  it("quiesce past quiesceTimeoutMs: ETIMEDOUT and the previous running value", async () => {
    let calls = 0;
    const region = makeRegion({
      quiesceTimeoutMs: 20,
      callbacks: {
        quiesce: (signal) =>
          new Promise<void>((resolve) => {
            calls++;
            const t = setTimeout(resolve, 5_000);
            signal.addEventListener("abort", () => {
              clearTimeout(t);
              resolve();
            });
          }),
      },
    });
    for (const v of [9, 0xb, 0, 8, 2, 4]) {
      const e = await expectCode(writeState(region, v), "ETIMEDOUT");
      expect(e.state).toBe("_RUNNING");
      expectConsistent(region, 1);
    }
    await writeState(region, 3);
    const session = region.device.session;
    // Leaving pre-copy for a quiesced state quiesces first, so the session survives the failure.
    for (const v of [0xb, 9, 0, 2, 0xa]) {
      await expectCode(writeState(region, v), "ETIMEDOUT");
      expectConsistent(region, 3);
      expect(region.device.session).toBe(session);
    }
    expect(calls).toBe(11);
    await writeState(region, 1); // no quiesce needed: PRE_COPY -> RUNNING
    expectConsistent(region, 1);
  });

  it("without NDMA there is no quiesce", async () => {
    let calls = 0;
    const region = makeRegion({ ndma: false, callbacks: { quiesce: () => void calls++ } });
    for (const v of [0, 1, 3, 2, 0, 4]) await writeState(region, v);
    expect(calls).toBe(0);
  });

  it("the user may read or write device_state at any time: during an in-flight write a read gives the previous value and a second write waits its turn", async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const region = makeRegion({ callbacks: { quiesce: () => gate } });
    const pending = writeState(region, 9);
    expect(readState(region)).toBe(1);
    const second = writeState(region, 0);
    // The registers whose answer depends on the state being established still refuse.
    expectThrowCode(() => region.readData(DATA_WINDOW_OFFSET, 1), "EBUSY");
    expectThrowCode(() => region.readRegister(REG_PENDING_BYTES, 8), "EBUSY");
    release();
    await pending;
    await second;
    expectConsistent(region, 0);
  });

  it("VFIO_DEVICE_RESET cancels device_state writes still waiting their turn; the region is idle at once", async () => {
    const region = makeRegion({ callbacks: { quiesce: () => new Promise<void>(() => undefined) } });
    const stuck = writeState(region, 9);
    const queued = writeState(region, 0);
    region.reset();
    // Idle at once: no register refuses with EBUSY after the reset.
    expectThrowCode(() => region.readRegister(REG_PENDING_BYTES, 8), "EINVAL");
    await expectCode(stuck, "ECANCELED");
    await expectCode(queued, "ECANCELED");
    expectConsistent(region, 1);
  });

  it("reset is never refused: a write stuck on a quiesce that never ends fails with ECANCELED", async () => {
    let stuck = true;
    // The first quiesce never finishes; later ones do.
    const region = makeRegion({ callbacks: { quiesce: () => (stuck ? new Promise<void>(() => undefined) : undefined) } });
    const pending = writeState(region, 9);
    region.reset();
    stuck = false;
    await expectCode(pending, "ECANCELED");
    expectConsistent(region, 1);
    // Usable at once.
    await writeState(region, 0);
    expectConsistent(region, 0);
  });

  /** A device whose setState can be told to stop part way and fail, to reach the unrecoverable cases. */
  class FlakyDevice extends MigrationDevice {
    readonly plan: (MigrationState | "fail")[] = [];
    override async setState(target: MigrationState) {
      const step = this.plan.shift();
      if (step === undefined) return super.setState(target);
      if (step !== "fail") await super.setState(step);
      throw new MigrationError("EIO", `injected failure at ${this.state}`);
    }
  }

  it("goes to the error state when the previous state cannot be restored", async () => {
    const device = new FlakyDevice({ regions: REGIONS, pageSize: PAGE, features: { p2p: true, precopy: true } });
    const region = new MigrationRegion(device);
    created.push(region);
    // RUNNING -> stop-and-copy fails at STOP, and putting RUNNING back fails too.
    device.plan.push("STOP", "fail");
    const e = await expectCode(writeState(region, 2), "EIO");
    expect(e.state).toBe("_ERROR");
    expectConsistent(region, 6);
    await expectCode(writeState(region, 1), "EINVAL");
    expectThrowCode(() => region.readRegister(REG_PENDING_BYTES, 8), "EINVAL");
    region.reset();
    expectConsistent(region, 1);
    // Pre-copy -> STOP fails after the session ended: a new session is not "the previous state".
    await writeState(region, 3);
    device.plan.push("RUNNING");
    await expectCode(writeState(region, 0), "EIO");
    expectConsistent(region, 6);
    region.reset();
    expectConsistent(region, 1);
  });

  // Found by the model-based test below (seed -919127226, path "67:4:3:5:5:4:5"): [ndma=false,
  // failures(quiesce=true, save=true), write(_RESUMING), feedValidStream, write(_SAVING)]. The
  // stream was loaded (RESUMING -> STOP) and the save failed (STOP -> STOP_COPY): the register read
  // 6 while the v2 device was left in STOP, so the two disagreed.
  it("a failed save after a resumed stream leaves register and device both in the error state", async () => {
    const stream = await validStream(SMALL, 17);
    const region = makeRegion({
      ndma: false,
      regions: SMALL,
      windowSize: 512,
      callbacks: {
        quiesce: () => {
          throw new MigrationError("EIO", "quiesce failed");
        },
        saveConfig: () => {
          throw new MigrationError("EIO", "config failed");
        },
      },
    });
    await writeState(region, 4);
    await feed(
      region,
      rechunk(stream, () => 500),
    );
    const e = await expectCode(writeState(region, 2), "EIO");
    expect(e.state).toBe("_ERROR");
    expectConsistent(region, 6);
    // Nothing acts on a state the register does not show: every write is refused, reset recovers.
    for (let v = 0; v < 16; v++) await expectCode(writeState(region, v), "EINVAL");
    expectThrowCode(() => region.readRegister(REG_PENDING_BYTES, 8), "EINVAL");
    region.reset();
    expectConsistent(region, 1);
  });
});

// --- the save and resume loops ------------------------------------------------------------------

describe("save loop and resume loop", () => {
  const chunkings: [string, (segments: Uint8Array[], window: number) => Uint8Array[]][] = [
    ["the source's segments", (s) => s],
    ["fixed 1000-byte writes", (s) => rechunk(concat(s), () => 1000)],
    [
      "random sizes up to the window",
      (s, w) =>
        rechunk(
          concat(s),
          (
            (r) => () =>
              1 + Math.floor(r() * w)
          )(prng(3)),
        ),
    ],
    [
      "single bytes at the start, then whole windows",
      (s, w) =>
        rechunk(
          concat(s),
          (
            (n) => () =>
              n++ < 40 ? 1 : w
          )(0),
        ),
    ],
  ];

  it.each(chunkings)("pre-copy + stop-and-copy, resumed with %s", async (_name, chunking) => {
    for (const ndma of [true, false]) {
      const source = makeRegion({ ndma, regions: BIG, windowSize: 65536 });
      fill(source, 21);
      const { segments, precopySegments } = await saveV1(source, 5);
      expect(precopySegments).toBeGreaterThan(5);
      expectConsistent(source, 0);
      const target = makeRegion({ ndma, regions: BIG, windowSize: 100_000 });
      fill(target, 99);
      await writeState(target, ndma ? 0xc : 4);
      await feed(target, chunking(segments, target.windowSize));
      await writeState(target, 1);
      expectConsistent(target, 1);
      expect(target.device.model.digest()).toBe(source.device.model.digest());
    }
  });

  it("keeps a segment pending_bytes announced across a pre-copy -> stop-and-copy change", async () => {
    const source = makeRegion({ regions: BIG, windowSize: 65536 });
    fill(source, 4);
    await writeState(source, 3);
    const segments: Uint8Array[] = [];
    expect(source.readRegister(REG_PENDING_BYTES, 8)).toBeGreaterThan(0n);
    const offset = Number(source.readRegister(REG_DATA_OFFSET, 8));
    segments.push(source.readData(offset, Number(source.readRegister(REG_DATA_SIZE, 8))));
    expect(source.readRegister(REG_PENDING_BYTES, 8)).toBeGreaterThan(0n); // announces the next one
    await writeState(source, 0xb);
    // The state change restarted the iteration: data_offset needs pending_bytes first.
    expectThrowCode(() => source.readRegister(REG_DATA_OFFSET, 8), "EINVAL");
    await writeState(source, 0xa);
    drain(source, segments);
    const target = makeRegion({ regions: BIG });
    await writeState(target, 4);
    await feed(target, segments);
    await writeState(target, 1);
    expect(target.device.model.digest()).toBe(source.device.model.digest());
  });

  it("a save from STOP (paused VM) and a second save after reset", async () => {
    const source = makeRegion({ windowSize: 2048 });
    fill(source, 8);
    await writeState(source, 0);
    const stream = await (async () => {
      await writeState(source, 2);
      const out: Uint8Array[] = [];
      drain(source, out);
      return out;
    })();
    source.reset();
    const target = makeRegion();
    await writeState(target, 4);
    await feed(target, stream);
    await writeState(target, 0);
    expectConsistent(target, 0);
    expect(target.device.model.digest()).toBe(source.device.model.digest());
  });
});

// --- EINVAL cases -------------------------------------------------------------------------------

describe("invalid accesses", () => {
  it("out-of-sequence save accesses", async () => {
    const region = makeRegion({ windowSize: 4096 });
    fill(region, 1);
    await writeState(region, 3);
    expectThrowCode(() => region.readRegister(REG_DATA_OFFSET, 8), "EINVAL"); // before pending_bytes
    expectThrowCode(() => region.readRegister(REG_DATA_SIZE, 8), "EINVAL");
    expectThrowCode(() => region.readData(DATA_WINDOW_OFFSET, 1), "EINVAL"); // nothing staged
    expect(region.readRegister(REG_PENDING_BYTES, 8)).toBeGreaterThan(0n);
    expectThrowCode(() => region.readRegister(REG_DATA_SIZE, 8), "EINVAL"); // before data_offset
    expectThrowCode(() => region.writeData(DATA_WINDOW_OFFSET, new Uint8Array(1)), "EINVAL"); // saving: read-only window
    region.readRegister(REG_DATA_OFFSET, 8);
    expect(region.readRegister(REG_DATA_SIZE, 8)).toBeGreaterThan(0n);
    await expectCode(region.writeRegister(REG_DATA_SIZE, 8, 10n), "EINVAL"); // RO while saving
    await writeState(region, 3); // a same-value write also restarts the iteration
    expectThrowCode(() => region.readRegister(REG_DATA_SIZE, 8), "EINVAL");
    // Pre-copy with nothing to send: 0, and data_offset stays out of sequence.
    const empty: Uint8Array[] = [];
    drain(region, empty);
    expect(region.readRegister(REG_PENDING_BYTES, 8)).toBe(0n);
    expectThrowCode(() => region.readRegister(REG_DATA_OFFSET, 8), "EINVAL");
  });

  it("save registers outside SAVING, resume registers outside RESUMING", async () => {
    const region = makeRegion();
    for (const v of [1, 0, 9]) {
      await writeState(region, v);
      for (const off of [REG_PENDING_BYTES, REG_DATA_OFFSET, REG_DATA_SIZE]) expectThrowCode(() => region.readRegister(off, 8), "EINVAL");
      await expectCode(region.writeRegister(REG_DATA_SIZE, 8, 0n), "EINVAL");
      expectThrowCode(() => region.readData(DATA_WINDOW_OFFSET, 1), "EINVAL");
      expectThrowCode(() => region.writeData(DATA_WINDOW_OFFSET, new Uint8Array(1)), "EINVAL");
    }
    await writeState(region, 4);
    expectThrowCode(() => region.readRegister(REG_PENDING_BYTES, 8), "EINVAL");
  });

  it("out-of-sequence resume accesses", async () => {
    const region = makeRegion({ windowSize: 4096 });
    await writeState(region, 4);
    await expectCode(region.writeRegister(REG_DATA_SIZE, 8, 0n), "EINVAL"); // before data_offset
    region.readRegister(REG_DATA_OFFSET, 8);
    await expectCode(region.writeRegister(REG_DATA_SIZE, 8, 4097n), "EINVAL"); // larger than the window
    await region.writeRegister(REG_DATA_SIZE, 8, 0n);
    await expectCode(region.writeRegister(REG_DATA_SIZE, 8, 0n), "EINVAL"); // data_offset again first
  });

  it("wrong widths, misaligned offsets, gaps", async () => {
    const region = makeRegion();
    const bad: [number, number][] = [
      [0, 8],
      [0, 2],
      [0, 1],
      [2, 4],
      [4, 8],
      [8, 4],
      [12, 4],
      [9, 8],
      [16, 4],
      [20, 4],
      [24, 4],
      [28, 4],
      [32, 4],
      [32, 8],
      [DATA_WINDOW_OFFSET, 8],
      [-8, 8],
      [1.5, 4],
      [0, 16],
      [Number.NaN, 4],
    ];
    for (const [offset, width] of bad) {
      expectThrowCode(() => region.readRegister(offset, width), "EINVAL");
      await expectCode(region.writeRegister(offset, width, width === 8 ? 0n : 0), "EINVAL");
    }
    await expectCode(region.writeRegister(REG_DATA_SIZE, 8, 5 as unknown as bigint), "EINVAL");
    await expectCode(region.writeRegister(REG_DATA_SIZE, 8, -1n), "EINVAL");
    await expectCode(region.writeRegister(REG_DATA_SIZE, 8, 1n << 64n), "EINVAL");
    expectConsistent(region, 1);
  });

  it("read-only registers; the reserved word reads 0 and ignores writes", async () => {
    const region = makeRegion();
    fill(region, 2);
    for (const v of [1, 3, 1, 4]) {
      await writeState(region, v);
      await expectCode(region.writeRegister(REG_PENDING_BYTES, 8, 1n), "EINVAL");
      await expectCode(region.writeRegister(REG_DATA_OFFSET, 8, BigInt(DATA_WINDOW_OFFSET)), "EINVAL");
      await region.writeRegister(REG_RESERVED, 4, 0xdead);
      expect(region.readRegister(REG_RESERVED, 4)).toBe(0);
      expectConsistent(region, v);
    }
  });

  it("data window bounds", async () => {
    const region = makeRegion({ windowSize: 1000 });
    await writeState(region, 4);
    const end = DATA_WINDOW_OFFSET + 1000;
    expect(region.size).toBe(end);
    for (const [offset, length] of [
      [DATA_WINDOW_OFFSET - 1, 1],
      [0, 4],
      [32, 1],
      [end - 1, 2],
      [DATA_WINDOW_OFFSET, 1001],
      [DATA_WINDOW_OFFSET, -1],
      [DATA_WINDOW_OFFSET + 0.5, 1],
    ] as const) {
      expectThrowCode(() => region.readData(offset, length), "EINVAL");
      if (length >= 0) expectThrowCode(() => region.writeData(offset, new Uint8Array(length)), "EINVAL");
    }
    region.writeData(end - 3, new Uint8Array([1, 2, 3]));
    expect([...region.readData(end - 3, 3)]).toEqual([1, 2, 3]);
    expect(region.readData(DATA_WINDOW_OFFSET, 0)).toHaveLength(0);
  });
});

// --- corrupted streams ----------------------------------------------------------------------------

describe("corrupted or incomplete streams", () => {
  const damages: [string, (s: Uint8Array) => Uint8Array][] = [
    [
      "a flipped byte",
      (s) => {
        const c = s.slice();
        c[Math.floor(c.length / 2)]! ^= 0x40;
        return c;
      },
    ],
    ["truncation", (s) => s.subarray(0, s.length - 17)],
    ["a missing middle", (s) => concat([s.subarray(0, 3000), s.subarray(6000)])],
  ];

  it.each(damages)("%s: clearing RESUMING fails to the error state, content intact, reset recovers", async (_name, damage) => {
    const stream = await validStream(REGIONS, 33);
    const target = makeRegion({ windowSize: 2048 });
    fill(target, 44);
    const before = target.device.model.digest();
    await writeState(target, 4);
    // The driver may fail the data_size write nearest to the detection (1.5); keep writing.
    let early: MigrationError | undefined;
    for (const piece of rechunk(damage(stream), () => 2048)) {
      target.readRegister(REG_DATA_OFFSET, 8);
      target.writeData(DATA_WINDOW_OFFSET, piece);
      try {
        await target.writeRegister(REG_DATA_SIZE, 8, BigInt(piece.length));
      } catch (e) {
        early ??= e as MigrationError;
      }
    }
    if (early) expect(isCorruptionCode(early.code), early.message).toBe(true);
    const e = await rejection(writeState(target, 1));
    expect(isCorruptionCode(e.code), e.message).toBe(true);
    expect(e.state).toBe("_ERROR");
    expect(readState(target)).toBe(6);
    expect(target.device.state).toBe("ERROR");
    expect(target.device.model.digest()).toBe(before);
    for (let v = 0; v < 16; v++) await expectCode(writeState(target, v), "EINVAL");
    expectThrowCode(() => target.readRegister(REG_DATA_OFFSET, 8), "EINVAL");
    await expectCode(target.writeRegister(REG_DATA_SIZE, 8, 0n), "EINVAL");
    target.reset();
    expectConsistent(target, 1);
    expect(target.device.model.digest()).toBe(before);
    // And the device resumes a good stream afterwards.
    await writeState(target, 4);
    await feed(
      target,
      rechunk(stream, () => 2048),
    );
    await writeState(target, 1);
    expect(target.device.model.digest()).not.toBe(before);
  });

  it("loadConfig failing on the way out of RESUMING: error state, content intact", async () => {
    const srcRegion = makeRegion({ callbacks: { saveConfig: () => new Uint8Array([5]) } });
    fill(srcRegion, 3);
    await writeState(srcRegion, 2);
    const stream: Uint8Array[] = [];
    drain(srcRegion, stream);
    const target = makeRegion({
      callbacks: {
        loadConfig: () => {
          throw new MigrationError("EIO", "config rejected");
        },
      },
    });
    const before = target.device.model.digest();
    await writeState(target, 4);
    await feed(target, stream);
    const e = await expectCode(writeState(target, 9), "EIO");
    expect(e.state).toBe("_ERROR");
    expect(readState(target)).toBe(6);
    expect(target.device.model.digest()).toBe(before);
    target.reset();
    expectConsistent(target, 1);
  });
});

// --- model-based ----------------------------------------------------------------------------------

const SMALL = [
  { name: "a", size: 3000 },
  { name: "b", size: 1500 },
];
// Every valid state from every valid state ("should attempt to support any transition").
const ALLOWED: Readonly<Record<number, readonly number[]>> = {
  0: [0, 1, 2, 3, 4],
  1: [0, 1, 2, 3, 4],
  2: [0, 1, 2, 3, 4],
  3: [0, 1, 2, 3, 4],
  4: [0, 1, 2, 3, 4],
};

interface Model {
  ndma: boolean;
  state: number;
  /** What was written in the current RESUMING: nothing, exactly one valid stream, or anything else. */
  fed: "none" | "valid" | "bad";
  failQuiesce: boolean;
  failSave: boolean;
}
interface Real {
  region: MigrationRegion;
  flags: { failQuiesce: boolean; failSave: boolean };
  stream: Uint8Array;
}

/** The accept/reject rules of 1.7 as this region applies them, written independently. */
function modelAccepts(m: Model, v: number): boolean {
  if (m.state === 6 || v < 0 || v > 0xffffffff || (v & ~0xf) !== 0) return false;
  if ((v & 8) !== 0 && !m.ndma) return false;
  if ((v & 4) !== 0 && (v & 3) !== 0) return false;
  return ALLOWED[m.state & 7]!.includes(v & 7);
}
/** Whether the v2 path of an accepted write quiesces (NDMA devices only) or enters STOP_COPY. */
function modelQuiesces(m: Model, v: number): boolean {
  const from = m.state & 0xb;
  const to = v & 0xb;
  if (!m.ndma || from === to) return false;
  if (from === 1) return to !== 3; // RUNNING -> anything but pre-copy passes RUNNING_P2P
  if (from === 3) return to !== 1 && to !== 3; // pre-copy quiesces before leaving for a !RUNNING/NDMA state
  return false;
}
function modelSaves(m: Model, v: number): boolean {
  return (v & 7) === 2 && (m.state & 7) !== 2;
}

function check(m: Model, r: Real): void {
  const value = readState(r.region);
  expect(value).toBe(m.state);
  expect(classifyDeviceState(value).valid || value === 6).toBe(true);
  expectConsistent(r.region, value);
}

class WriteState implements fc.AsyncCommand<Model, Real> {
  constructor(readonly value: number) {}
  check = (): boolean => true;
  async run(m: Model, r: Real): Promise<void> {
    const v = this.value;
    r.flags.failQuiesce = m.failQuiesce;
    r.flags.failSave = m.failSave;
    const leavesResuming = (m.state & 4) !== 0 && (v & 4) === 0;
    if (!modelAccepts(m, v)) {
      await expectCode(writeState(r.region, v), "EINVAL");
    } else if (leavesResuming && m.fed !== "valid") {
      // Leaving RESUMING validates first: a bad stream is the error state.
      await rejection(writeState(r.region, v));
      m.state = 6;
    } else if (leavesResuming && m.failSave && modelSaves(m, v)) {
      // RESUMING -> stop-and-copy got past validation, then the save failed: the resuming
      // session is gone, so the previous state cannot be restored.
      await expectCode(writeState(r.region, v), "EIO");
      m.state = 6;
    } else if ((m.failQuiesce && modelQuiesces(m, v)) || (m.failSave && modelSaves(m, v))) {
      await expectCode(writeState(r.region, v), "EIO");
    } else {
      await writeState(r.region, v);
      if ((v & 4) !== 0 && (m.state & 4) === 0) m.fed = "none";
      m.state = v;
    }
    check(m, r);
  }
  toString = (): string => `write(${deviceStateName(this.value)})`;
}

class SaveIteration implements fc.AsyncCommand<Model, Real> {
  check = (): boolean => true;
  async run(m: Model, r: Real): Promise<void> {
    const saving = m.state !== 6 && (m.state & 2) !== 0;
    if (!saving) expectThrowCode(() => r.region.readRegister(REG_PENDING_BYTES, 8), "EINVAL");
    else if (r.region.readRegister(REG_PENDING_BYTES, 8) > 0n) {
      r.region.readRegister(REG_DATA_OFFSET, 8);
      r.region.readData(DATA_WINDOW_OFFSET, Number(r.region.readRegister(REG_DATA_SIZE, 8)));
    }
    check(m, r);
  }
  toString = (): string => "saveIteration";
}

class Feed implements fc.AsyncCommand<Model, Real> {
  constructor(readonly junk: Uint8Array | undefined) {}
  check = (): boolean => true;
  async run(m: Model, r: Real): Promise<void> {
    const resuming = m.state !== 6 && (m.state & 4) !== 0;
    if (!resuming) {
      await expectCode(r.region.writeRegister(REG_DATA_SIZE, 8, 0n), "EINVAL");
    } else if (this.junk === undefined) {
      if (m.fed === "none")
        await feed(
          r.region,
          rechunk(r.stream, () => 500),
        );
      else {
        // After other data the decoder may refuse it here or only when RESUMING is cleared.
        await feed(
          r.region,
          rechunk(r.stream, () => 500),
        ).catch(() => undefined);
      }
      m.fed = m.fed === "none" ? "valid" : "bad";
    } else {
      try {
        await feed(r.region, [this.junk]);
      } catch {
        // junk may be refused at once or only when RESUMING is cleared
      }
      if (this.junk.length > 0) m.fed = "bad";
    }
    check(m, r);
  }
  toString = (): string => (this.junk === undefined ? "feedValidStream" : `feedJunk(${this.junk.length})`);
}

class Workload implements fc.AsyncCommand<Model, Real> {
  constructor(
    readonly at: number,
    readonly byte: number,
  ) {}
  check = (m: Readonly<Model>): boolean => m.state !== 6 && (m.state & 1) !== 0;
  async run(m: Model, r: Real): Promise<void> {
    r.region.device.write("a", this.at, new Uint8Array([this.byte]));
    check(m, r);
  }
  toString = (): string => `workload(${this.at})`;
}

class Reset implements fc.AsyncCommand<Model, Real> {
  check = (): boolean => true;
  async run(m: Model, r: Real): Promise<void> {
    r.region.reset();
    m.state = 1;
    m.fed = "none";
    check(m, r);
  }
  toString = (): string => "reset";
}

class SetFailures implements fc.AsyncCommand<Model, Real> {
  constructor(
    readonly failQuiesce: boolean,
    readonly failSave: boolean,
  ) {}
  check = (): boolean => true;
  async run(m: Model): Promise<void> {
    m.failQuiesce = this.failQuiesce;
    m.failSave = this.failSave;
  }
  toString = (): string => `failures(quiesce=${this.failQuiesce}, save=${this.failSave})`;
}

describe("model-based: random register traffic", () => {
  let stream: Uint8Array | undefined;
  // Biased toward the valid states so runs get deep (RESUMING and out, stop-and-copy, ...).
  const write = fc
    .oneof(
      { weight: 4, arbitrary: fc.constantFrom(0, 1, 2, 3, 4, 8, 9, 0xa, 0xb, 0xc) },
      { weight: 3, arbitrary: fc.integer({ min: 0, max: 15 }) },
      { weight: 1, arbitrary: fc.constantFrom(0x10, 0x11, 0x80000003, 0xffffffff) },
    )
    .map((v) => new WriteState(v));
  const commands = fc.commands(
    [
      write,
      write,
      write,
      fc.constant(new SaveIteration()),
      fc.constant(new SaveIteration()),
      fc.option(fc.uint8Array({ minLength: 0, maxLength: 300 }), { nil: undefined, freq: 2 }).map((j) => new Feed(j)),
      fc.tuple(fc.nat(2999), fc.nat(255)).map(([at, b]) => new Workload(at, b)),
      fc.constant(new Reset()),
      fc.tuple(fc.nat(3), fc.nat(3)).map(([q, s]) => new SetFailures(q === 0, s === 0)),
    ],
    { maxCommands: 50, size: "large" },
  );

  test.prop([fc.boolean(), commands], { numRuns: 100 })("device_state is valid or 6 and matches the v2 state", async (ndma, cmds) => {
    stream ??= await validStream(SMALL, 17);
    const flags = { failQuiesce: false, failSave: false };
    const region = makeRegion({
      ndma,
      regions: SMALL,
      windowSize: 512,
      callbacks: {
        quiesce: () => {
          if (flags.failQuiesce) throw new MigrationError("EIO", "quiesce failed");
        },
        saveConfig: () => {
          if (flags.failSave) throw new MigrationError("EIO", "config failed");
          return new Uint8Array([1]);
        },
      },
    });
    const s = stream;
    await fc.asyncModelRun(
      () => ({ model: { ndma, state: 1, fed: "none", failQuiesce: false, failSave: false } satisfies Model, real: { region, flags, stream: s } }),
      cmds,
    );
    region.device.free();
    created.splice(created.indexOf(region), 1);
  });
});
