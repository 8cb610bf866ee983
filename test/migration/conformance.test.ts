// VFIO conformance, round two: one test per rule, each named after the uAPI (or kernel, or QEMU)
// sentence it checks.
import vm from "node:vm";
import { describe, expect, it } from "vitest";
import { MigrationError } from "../../src/core/errors.js";
import { migrateIn, migrateOut } from "../../src/migration/precopy.js";
import { type SavingSession, VFIO_PRECOPY_INFO_REINIT } from "../../src/migration/saving-session.js";
import { MigrationDevice } from "../../src/migration/v2/migration-device.js";
import type { MigrationState } from "../../src/migration/v2/states.js";
import { v1StateToV2, v2StateToV1, VFIO_DEVICE_FEATURE_MIG_DATA_SIZE, VFIO_MIGRATION_P2P } from "../../src/migration/uapi.js";
import * as api from "../../src/index.js";
import { createEncoder } from "../../src/codec/encoder.js";
import { asSaving, concat, drain, expectCode, FEATURE_SETS, fillRandom, makeDevice, PAGE } from "./helpers.js";

const RUNNING_STATES = new Set<MigrationState>(["RUNNING", "RUNNING_P2P", "PRE_COPY", "PRE_COPY_P2P"]);

describe("PRE_COPY info (VFIO_MIG_GET_PRECOPY_INFO)", () => {
  it("the encoder reports the bytes it holds: the header before the first drain and the record left open by flush()", () => {
    let handed = 0;
    const encoder = createEncoder({ regions: [{ name: "r", size: 8 * PAGE }], ondata: (c: Uint8Array) => void (handed += c.length) });
    expect(encoder.heldBytes).toBeGreaterThan(0);
    encoder.writePages("r", 0, new Uint8Array(4 * PAGE));
    encoder.flush();
    const held = encoder.heldBytes;
    expect(held).toBeGreaterThan(0);
    const before = handed;
    encoder.end();
    expect(encoder.heldBytes).toBe(0);
    // What was held came out, with the END record after it.
    expect(handed - before).toBeGreaterThanOrEqual(held);
  });

  it("'When both initial_bytes and dirty_bytes are zero ... read() should fail with ENOMSG': data the encoder holds open counts", async () => {
    // The audit's case: page 0 and pages 256-511 of a 512-page region dirty, read once.
    const device = new MigrationDevice({ regions: [{ name: "r", size: 512 * PAGE }], tracking: "explicit" });
    const session = asSaving(await device.setState("PRE_COPY"));
    drain(session);
    const page = new Uint8Array(PAGE).fill(7);
    device.write("r", 0, page);
    for (let p = 256; p < 512; p++) device.write("r", p * PAGE, page);
    session.read(1 << 20);
    const info = session.precopyInfo();
    const rest = concat(drain(session).chunks).length;
    expect(rest).toBeGreaterThan(0);
    expect(info.initialBytes + info.dirtyBytes).toBeGreaterThan(0);
    device.free();
  });

  it("'initial_bytes ... should start non-zero and decrease as data is read' in stream bytes: 16 zero pages report their stream size, not 64 KiB", async () => {
    const device = new MigrationDevice({ regions: [{ name: "z", size: 16 * PAGE }] });
    const session = asSaving(await device.setState("PRE_COPY"));
    const info = session.precopyInfo();
    const initial = concat(drain(session).chunks).length;
    expect(initial).toBeLessThan(400);
    expect(info.initialBytes).toBeGreaterThan(0);
    expect(Math.abs(info.initialBytes - initial)).toBeLessThanOrEqual(64);
    device.free();
  });

  it("'initial_bytes ... decrease as data is read': never rises while the first pass is read", async () => {
    const device = makeDevice();
    fillRandom(device, 3);
    const session = asSaving(await device.setState("PRE_COPY"));
    let last = Infinity;
    for (;;) {
      const info = session.precopyInfo();
      expect(info.initialBytes).toBeLessThanOrEqual(last);
      last = info.initialBytes;
      if (last === 0) break;
      session.read(3000);
    }
    device.free();
  });

  it("'returns -EINVAL ... if the device is not in the PRE_COPY states' (mlx5): STOP_COPY and a closed session refuse", async () => {
    const device = makeDevice();
    const session = asSaving(await device.setState("PRE_COPY"));
    session.precopyInfo();
    await device.setState("STOP_COPY");
    await expectCode(() => session.precopyInfo(), "EINVAL");
    await expectCode(() => device.precopyInfo(), "EINVAL");
    await device.setState("STOP");
    await expectCode(() => session.precopyInfo(), "EINVAL");
    device.free();
  });

  it("PRECOPY_INFOv2 (opt-in): 'after a re-initialisation initial_bytes may rise' and the info says REINIT; v1 info counts it as dirty", async () => {
    const device = makeDevice({ precopyInfoV2: true });
    fillRandom(device, 5);
    const session = asSaving(await device.setState("PRE_COPY"));
    const chunks = drain(session).chunks;
    expect(session.initialDataSent).toBe(true);
    expect(device.precopyInfoV2()).toEqual({ initialBytes: 0, dirtyBytes: 0, flags: 0 });
    device.reinitialize();
    expect(session.initialDataSent).toBe(false);
    const v1 = device.precopyInfo();
    expect(v1.initialBytes).toBe(0);
    expect(v1.dirtyBytes).toBeGreaterThan(0);
    const v2 = device.precopyInfoV2();
    expect(v2.flags).toBe(VFIO_PRECOPY_INFO_REINIT);
    expect(v2.initialBytes).toBeGreaterThan(0);
    expect(device.precopyInfoV2().flags).toBe(0);
    // The stream still resumes to the device's state.
    drain(session, chunks);
    await device.setState("STOP_COPY");
    drain(session, chunks);
    const target = makeDevice();
    await migrateIn(target, chunks);
    expect(Buffer.from(target.model.snapshot()).equals(Buffer.from(device.model.snapshot()))).toBe(true);
    device.free();
    target.free();
    const plain = makeDevice();
    await plain.setState("PRE_COPY");
    await expectCode(() => plain.precopyInfoV2(), "EINVAL");
    plain.free();
  });
});

describe("stop and start callbacks", () => {
  it.each(FEATURE_SETS)(
    "'STOP: the device must not generate interrupts, DMA, or any other change': every arc leaving the running states calls stop once per stop ($name)",
    async ({ features }) => {
      const calls: string[] = [];
      const device = makeDevice({
        features,
        callbacks: { stop: () => void calls.push("stop"), start: () => void calls.push("start"), quiesce: () => void calls.push("quiesce") },
      });
      const running: MigrationState[] = ["RUNNING", ...(features.p2p ? (["RUNNING_P2P"] as const) : []), ...(features.precopy ? (["PRE_COPY"] as const) : [])];
      if (features.p2p && features.precopy) running.push("PRE_COPY_P2P");
      for (const from of running) {
        for (const to of ["STOP", "STOP_COPY"] as const) {
          device.reset();
          await device.setState(from);
          calls.length = 0;
          await device.setState(to);
          expect(
            calls.filter((c) => c === "stop"),
            `${from} -> ${to}`,
          ).toHaveLength(1);
          expect(calls).not.toContain("start");
          calls.length = 0;
          await device.setState("RUNNING");
          expect(calls, `${to} -> RUNNING`).toEqual(["start"]);
        }
      }
      device.free();
    },
  );

  it("a stop that misses the quiesce deadline fails with ETIMEDOUT and leaves the device running where it was", async () => {
    const device = makeDevice({ features: { p2p: false, precopy: true }, quiesceTimeoutMs: 20, callbacks: { stop: () => new Promise<void>(() => undefined) } });
    await device.setState("PRE_COPY");
    const error = await expectCode(() => device.setState("STOP_COPY"), "ETIMEDOUT");
    expect(error.state).toBe("PRE_COPY");
    expect(device.state).toBe("PRE_COPY");
    expect(RUNNING_STATES.has(device.state)).toBe(true);
    device.free();
  });
});

describe("reset against late callbacks", () => {
  // Each maker returns a pending answer for saveConfig and the function that settles it late.
  const makers: [string, () => { answer: PromiseLike<Uint8Array>; settle: () => void }][] = [
    [
      "a non-native thenable",
      () => {
        let ok!: (b: Uint8Array) => void;
        return {
          answer: { then: (resolve: (b: Uint8Array) => void) => void (ok = resolve) } as unknown as PromiseLike<Uint8Array>,
          settle: () => ok(new Uint8Array(3)),
        };
      },
    ],
    [
      "a promise from another realm",
      () => {
        const context = vm.createContext({});
        const made = vm.runInContext("let ok; const p = new Promise((r) => { ok = r; }); ({ p, ok })", context) as {
          p: PromiseLike<Uint8Array>;
          ok: (b: Uint8Array) => void;
        };
        expect(made.p instanceof Promise).toBe(false);
        return { answer: made.p, settle: () => made.ok(new Uint8Array(3)) };
      },
    ],
  ];
  it.each(makers)(
    "'VFIO_DEVICE_RESET returns the device to RUNNING': saveConfig returning %s, then reset: setState settles, a late answer installs nothing",
    async (_name, make) => {
      const { answer, settle } = make();
      const device = makeDevice({ callbacks: { saveConfig: () => answer } });
      const pending = device.setState("STOP_COPY");
      await new Promise((r) => setTimeout(r, 5));
      device.reset();
      await expectCode(() => pending, "ECANCELED");
      settle();
      await new Promise((r) => setTimeout(r, 5));
      expect(device.state).toBe("RUNNING");
      expect(device.session).toBeUndefined();
      device.write("ram", 0, new Uint8Array([1]));
      device.free();
    },
  );
});

describe("migrateOut (QEMU's save_setup)", () => {
  it("'other states: EINVAL': a device already in PRE_COPY is refused with a typed error and keeps the caller's session", async () => {
    for (const state of ["PRE_COPY", "PRE_COPY_P2P"] as const) {
      const device = makeDevice();
      const session = asSaving(await device.setState(state));
      session.read(100);
      const error = await expectCode(() => migrateOut(device, { send: () => undefined }), "EINVAL");
      expect(error.state).toBe(state);
      expect(device.state).toBe(state);
      expect(device.session).toBe(session);
      expect(session.closed).toBe(false);
      device.free();
    }
  });

  it("'if the device is STOP, leave it': a stopped device goes straight to stop-copy and the stream resumes", async () => {
    const device = makeDevice();
    fillRandom(device, 9);
    await device.setState("STOP");
    const chunks: Uint8Array[] = [];
    const report = await migrateOut(device, { send: (c) => void chunks.push(c.slice()) });
    expect(report.converged).toBe("no-precopy");
    const target = makeDevice();
    await migrateIn(target, chunks);
    expect(Buffer.from(target.model.snapshot()).equals(Buffer.from(device.model.snapshot()))).toBe(true);
    device.free();
    target.free();
  });

  it("switchover-ack ('VFIO_MIG_FLAG_DEV_INIT_DATA_SENT once initial bytes reach 0'): waitForInitialData and a switchover promise hold stop-copy back, waiting on whenReadable", async () => {
    const device = makeDevice();
    fillRandom(device, 11);
    let ack!: () => void;
    const switchover = new Promise<void>((r) => (ack = r));
    const chunks: Uint8Array[] = [];
    let sawInitial = false;
    const run = migrateOut(device, {
      send: (c) => {
        chunks.push(c.slice());
        sawInitial ||= (device.session as SavingSession).initialDataSent;
      },
      maxRounds: 1,
      waitForInitialData: true,
      switchover,
    });
    await new Promise((r) => setTimeout(r, 20));
    expect(device.state).toBe("PRE_COPY");
    // A write while the driver waits wakes it (whenReadable) and is sent before stop-copy.
    device.write("ram", 0, new Uint8Array(10).fill(0xaa));
    await new Promise((r) => setTimeout(r, 20));
    ack();
    const report = await run;
    expect(report.initialDataSent).toBe(true);
    expect(sawInitial).toBe(true);
    const target = makeDevice();
    await migrateIn(target, chunks);
    expect(Buffer.from(target.model.snapshot()).equals(Buffer.from(device.model.snapshot()))).toBe(true);
    device.free();
    target.free();
  });
});

describe("SavingSession.readInto and whenReadable", () => {
  it("readInto follows read(2): bytes written, null at the end, ENOMSG when pre-copy has nothing now", async () => {
    const device = makeDevice();
    fillRandom(device, 13);
    const expected = asSaving(await device.setState("PRE_COPY"));
    const buffer = new Uint8Array(7000);
    const out: Uint8Array[] = [];
    for (;;) {
      let n: number | null;
      try {
        n = expected.readInto(buffer);
      } catch (error) {
        expect((error as MigrationError).code).toBe("ENOMSG");
        break;
      }
      expect(n).not.toBeNull();
      expect(n!).toBeGreaterThan(0);
      expect(n!).toBeLessThanOrEqual(buffer.length);
      out.push(buffer.slice(0, n!));
    }
    await device.setState("STOP_COPY");
    for (let n = expected.readInto(buffer); n !== null; n = expected.readInto(buffer)) out.push(buffer.slice(0, n));
    expect(expected.readInto(buffer)).toBeNull();
    await expectCode(() => expected.readInto(new Uint8Array(0)), "EINVAL");
    const target = makeDevice();
    await migrateIn(target, out);
    expect(Buffer.from(target.model.snapshot()).equals(Buffer.from(device.model.snapshot()))).toBe(true);
    device.free();
    target.free();
  });

  it("release(): a released chunk's memory carries later bytes; a chunk not released, or a piece of it, never changes", async () => {
    // 6 MiB of incompressible pages: several encoder drains, each queued in a reusable buffer.
    const device = new MigrationDevice({ regions: [{ name: "ram", size: 6 << 20 }], tracking: "explicit" });
    fillRandom(device, 21);
    const session = asSaving(await device.setState("PRE_COPY"));
    const kept: { chunk: Uint8Array; copy: Uint8Array }[] = [];
    const stream: Uint8Array[] = [];
    const released = new Set<ArrayBufferLike>();
    let reused = 0;
    let n = 0;
    await device.setState("STOP_COPY");
    // 300 KB reads split each drain into pieces: only whole, fully released buffers come back.
    for (let chunk = session.read(300_000); chunk !== null; chunk = session.read(300_000), n++) {
      if (released.has(chunk.buffer)) reused++;
      stream.push(chunk.slice());
      if (n % 3 === 0) kept.push({ chunk, copy: chunk.slice() });
      else {
        session.release(chunk);
        session.release(chunk); // a second release of the same chunk is ignored
        released.add(chunk.buffer);
      }
      session.release(new Uint8Array(8)); // a chunk it never handed out is ignored
    }
    expect(reused).toBeGreaterThan(0);
    for (const { chunk, copy } of kept) expect(Buffer.from(chunk).equals(Buffer.from(copy))).toBe(true);
    const target = new MigrationDevice({ regions: [{ name: "ram", size: 6 << 20 }], tracking: "explicit" });
    await migrateIn(target, stream);
    expect(Buffer.from(target.model.snapshot()).equals(Buffer.from(device.model.snapshot()))).toBe(true);
    device.free();
    target.free();
  });

  it("'The user may poll() for more data': whenReadable settles on a write, on stop-copy and on close", async () => {
    const device = makeDevice({ tracking: "shadow" });
    const session = asSaving(await device.setState("PRE_COPY"));
    drain(session);
    let woke = false;
    const waiting = session.whenReadable().then(() => (woke = true));
    await new Promise((r) => setTimeout(r, 5));
    expect(woke).toBe(false);
    device.write("ram", 5, new Uint8Array([1]));
    await waiting;
    expect(session.read()).not.toBeNull();
    drain(session);
    const onStop = session.whenReadable();
    await device.setState("STOP_COPY");
    await onStop;
    device.free();
  });
});

describe("MIG_DATA_SIZE and uAPI numbers", () => {
  it("'VFIO_DEVICE_FEATURE_MIG_DATA_SIZE ... the estimated data length that will be required to complete stop copy' in any state", async () => {
    const device = makeDevice();
    fillRandom(device, 17);
    const before = device.stopCopySize();
    const session = asSaving(await device.setState("STOP_COPY"));
    const during = device.stopCopySize();
    const stream = concat(drain(session).chunks).length;
    for (const estimate of [before, during]) expect(Math.abs(estimate - stream) / stream).toBeLessThan(0.05);
    await device.setState("STOP");
    expect(device.stopCopySize()).toBeGreaterThan(0);
    expect(VFIO_DEVICE_FEATURE_MIG_DATA_SIZE).toBe(9);
    device.free();
  });

  it("the v2 -> v1 mapping inverts the v1 -> v2 one; P2P states need NDMA", () => {
    for (const state of ["ERROR", "STOP", "RUNNING", "STOP_COPY", "RESUMING", "RUNNING_P2P", "PRE_COPY", "PRE_COPY_P2P"] as const) {
      expect(v1StateToV2(v2StateToV1(state))).toBe(state);
    }
    expect(() => v2StateToV1("RUNNING_P2P", { ndma: false })).toThrow(MigrationError);
    expect(api.VFIO_MIGRATION_P2P).toBe(VFIO_MIGRATION_P2P);
    expect(api.VFIO_DEVICE_FEATURE_DMA_LOGGING_START).toBe(6);
    expect(api.VFIO_DEVICE_STATE_V1_SAVING).toBe(2);
  });
});
