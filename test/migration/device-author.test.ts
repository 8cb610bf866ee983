// What a device author needs when wiring a device by hand: one hook for every arc, reset that
// reaches the device, regions over the emulator's own memory, configuration errors at
// construction, a cancellable whenReadable, and the uAPI numbers from the package entry.
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import * as api from "../../src/index.js";
import { migrateIn, migrateOut } from "../../src/migration/precopy.js";
import { MigrationDevice } from "../../src/migration/v2/migration-device.js";
import { MIGRATION_STATES, type MigrationState, migrationPath } from "../../src/migration/v2/states.js";
import { asResuming, asSaving, concat, drain, expectCode, makeDevice, PAGE, randomBytes, rng } from "./helpers.js";

describe("callbacks.arc", () => {
  it("sees every arc of a combination path, leaving P2P (the un-quiesce) included", async () => {
    const seen: string[] = [];
    const device = makeDevice({ callbacks: { arc: (from, to, signal) => void seen.push(`${from}>${to}${signal.aborted ? "!" : ""}`) } });
    await device.setState("STOP");
    await device.setState("RUNNING");
    expect(seen).toEqual(["RUNNING>RUNNING_P2P", "RUNNING_P2P>STOP", "STOP>RUNNING_P2P", "RUNNING_P2P>RUNNING"]);
    device.free();
  });

  it("every pair of states: the arcs seen are the kernel's path (property over the 8x8 table, fixed seed)", async () => {
    const supported = MIGRATION_STATES.filter((s) => s !== "ERROR");
    await fc.assert(
      // RESUMING is left only with a whole stream, so it is a target here, not a start.
      fc.asyncProperty(fc.constantFrom(...supported.filter((s) => s !== "RESUMING")), fc.constantFrom(...supported), async (from, to) => {
        const seen: MigrationState[] = [];
        const device = makeDevice({ callbacks: { arc: (_from, next) => void seen.push(next) } });
        try {
          await device.setState(from);
        } catch {
          device.free();
          return;
        }
        seen.length = 0;
        let path: MigrationState[];
        try {
          path = migrationPath(from, to, device.features);
        } catch {
          await expectCode(() => device.setState(to), "EINVAL");
          device.free();
          return;
        }
        await device.setState(to);
        expect(seen).toEqual(path);
        device.free();
      }),
      { seed: 0x3a5c, numRuns: 60 },
    );
  });

  it("a failing arc fails the state change with its code; the device stays where the arc started", async () => {
    const device = makeDevice({
      callbacks: {
        arc: (from, to) => {
          if (from === "RUNNING_P2P" && to === "RUNNING") throw new api.MigrationError("EBUSY", "device busy");
        },
      },
    });
    await device.setState("RUNNING_P2P");
    const error = await expectCode(() => device.setState("RUNNING"), "EBUSY");
    expect(error.state).toBe("RUNNING_P2P");
    expect(device.state).toBe("RUNNING_P2P");
    device.free();
  });

  it("runs under the quiesce deadline: an arc that never returns is ETIMEDOUT and its signal aborts", async () => {
    let signalSeen: AbortSignal | undefined;
    const device = makeDevice({
      quiesceTimeoutMs: 50,
      callbacks: {
        arc: (_from, to, signal) => {
          if (to !== "RUNNING_P2P") return;
          signalSeen = signal;
          return new Promise<void>(() => {});
        },
      },
    });
    await expectCode(() => device.setState("RUNNING_P2P"), "ETIMEDOUT");
    expect(signalSeen?.aborted).toBe(true);
    expect(device.state).toBe("RUNNING");
    device.free();
  });
});

describe("reset()", () => {
  it("runs callbacks.reset and stops DMA logging", async () => {
    let resets = 0;
    const device = makeDevice({ callbacks: { reset: () => void resets++ } });
    device.startDmaLogging({ ranges: [{ iova: 0, length: 1 << 20 }], pageSize: PAGE });
    await device.setState("STOP_COPY");
    device.reset();
    expect(resets).toBe(1);
    expect(device.state).toBe("RUNNING");
    expect(device.model.dma.active).toBe(false);
    await expectCode(() => device.reportDmaLogging({ iova: 0, length: 1 << 20, pageSize: PAGE }), "EINVAL");
    device.startDmaLogging({ ranges: [{ iova: 0, length: 1 << 20 }], pageSize: PAGE });
    device.free();
  });

  it("a reset callback that throws is EIO, and the device is reset all the same", async () => {
    const device = makeDevice({
      callbacks: {
        reset: () => {
          throw new Error("firmware did not answer");
        },
      },
    });
    await device.setState("STOP");
    await expectCode(() => device.reset(), "EIO");
    expect(device.state).toBe("RUNNING");
    device.free();
  });
});

describe("closing a RESUMING session", () => {
  async function streamOf(seed: number): Promise<{ source: MigrationDevice; chunks: Uint8Array[] }> {
    const source = makeDevice();
    source.write("ram", 0, randomBytes(rng(seed), 40 * PAGE));
    const session = asSaving(await source.setState("STOP_COPY"));
    return { source, chunks: drain(session).chunks };
  }

  it("'QEMU closes it in load_cleanup before leaving RESUMING': close() stops writes but the resume completes", async () => {
    const { source, chunks } = await streamOf(41);
    const target = makeDevice();
    const session = asResuming(await target.setState("RESUMING"));
    for (const chunk of chunks) session.write(chunk);
    session.close();
    expect(session.closed).toBe(true);
    await expectCode(() => session.write(new Uint8Array(1)), "EINVAL");
    await target.setState("RUNNING");
    expect(target.model.digest()).toBe(source.model.digest());
    source.free();
    target.free();
  });

  it("a closed session whose stream is incomplete fails when RESUMING is left (validation happens there)", async () => {
    const { source, chunks } = await streamOf(42);
    const target = makeDevice();
    const before = target.model.digest();
    const session = asResuming(await target.setState("RESUMING"));
    session.write(chunks[0]!.subarray(0, 1000));
    session.close();
    await expectCode(() => target.setState("STOP"), "ENODATA");
    expect(target.state).toBe("ERROR");
    target.reset();
    expect(target.model.digest()).toBe(before);
    source.free();
    target.free();
  });
});

/** Three kinds of the embedder's memory: an ArrayBuffer, a SharedArrayBuffer, a WebAssembly.Memory. */
function emulatorMemory(): { regions: { name: string; memory: Uint8Array }[]; wasm: WebAssembly.Memory } {
  const wasm = new WebAssembly.Memory({ initial: 48 }); // 3 MiB
  return {
    wasm,
    regions: [
      { name: "regs", memory: new Uint8Array(new ArrayBuffer(300)) },
      { name: "ring", memory: new Uint8Array(new SharedArrayBuffer(64 * PAGE + 17)) },
      { name: "ram", memory: new Uint8Array(wasm.buffer, 4096, (2 << 20) + 5 * PAGE + 3) },
    ],
  };
}

describe("regions over the emulator's own memory ({ name, memory })", () => {
  it("migrate through pre-copy with markDirty, into regions over memory, byte for byte (property, fixed seed)", async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer(), fc.constantFrom("none" as const, "lz4" as const), async (seed, compress) => {
        const src = emulatorMemory();
        const random = rng(seed);
        for (const r of src.regions) r.memory.set(randomBytes(random, r.memory.length));
        const source = new MigrationDevice({ regions: src.regions, compress });
        const dst = emulatorMemory();
        const target = new MigrationDevice({ regions: dst.regions });
        const session = asSaving(await source.setState("PRE_COPY"));
        const chunks = drain(session).chunks;
        // The emulator writes its own memory, then says what it changed.
        for (let i = 0; i < 5; i++) {
          const offset = Math.floor(random() * ((2 << 20) - 100));
          src.regions[2]!.memory.set(randomBytes(random, 100), offset);
          source.markDirty("ram", offset, 100);
          src.regions[1]!.memory[i * 7] = i + 1;
          source.markDirty("ring", i * 7, 1);
        }
        drain(session, chunks);
        await source.setState("STOP_COPY");
        drain(session, chunks);
        await migrateIn(target, chunks);
        expect(target.model.digest()).toBe(source.model.digest());
        for (let i = 0; i < 3; i++) expect(Buffer.from(dst.regions[i]!.memory).equals(Buffer.from(src.regions[i]!.memory))).toBe(true);
        source.free();
        target.free();
      }),
      { seed: 0x6e6d, numRuns: 4 },
    );
  });

  it("the digest and the stream equal those of the same content in migstream's memory (windows of 1 MiB)", async () => {
    const ext = emulatorMemory();
    const random = rng(7);
    for (const r of ext.regions) r.memory.set(randomBytes(random, r.memory.length));
    const outside = new MigrationDevice({ regions: ext.regions });
    const inside = new MigrationDevice({ regions: ext.regions.map((r) => ({ name: r.name, size: r.memory.length })) });
    ext.regions.forEach((r) => inside.write(r.name, 0, r.memory));
    expect(outside.model.digest()).toBe(inside.model.digest());
    expect(outside.stopCopySize()).toBe(inside.stopCopySize());
    const stream = async (device: MigrationDevice): Promise<Uint8Array> => {
      const chunks: Uint8Array[] = [];
      await migrateOut(device, { send: (chunk) => void chunks.push(chunk.slice()), maxRounds: 1 });
      return concat(chunks);
    };
    const a = await stream(outside);
    const b = await stream(inside);
    expect(a.length).toBeGreaterThan(0);
    expect(Buffer.from(a).equals(Buffer.from(b))).toBe(true);
    outside.free();
    inside.free();
  });

  it("a WebAssembly.Memory that grew detaches the view: EINVAL, not stale bytes", async () => {
    const ext = emulatorMemory();
    const device = new MigrationDevice({ regions: ext.regions });
    ext.wasm.grow(1);
    await expectCode(() => device.model.digest(), "EINVAL");
    device.free();
  });
});

describe("configuration errors at construction", () => {
  it("maxRecordPayload below the page size is EINVAL when the device is made, not at the first state change", async () => {
    await expectCode(() => makeDevice({ maxRecordPayload: PAGE - 1 }), "EINVAL");
    await expectCode(() => makeDevice({ maxRecordPayload: PAGE + 0.5 }), "EINVAL");
    makeDevice({ maxRecordPayload: PAGE }).free();
  });

  it("an unknown checksum or compression, a device id past the limit, a non-function callback are EINVAL", async () => {
    await expectCode(() => makeDevice({ checksum: "md5" as never }), "EINVAL");
    await expectCode(() => makeDevice({ compress: "zstd" as never }), "EINVAL");
    await expectCode(() => makeDevice({ deviceId: "x".repeat(70000) }), "EINVAL");
    await expectCode(() => makeDevice({ callbacks: { stop: 5 as never } }), "EINVAL");
    await expectCode(() => makeDevice({ quiesceTimeoutMs: -1 }), "EINVAL");
    await expectCode(() => makeDevice({ features: { p2p: "yes" as never } }), "EINVAL");
  });

  it("memory that is not a Uint8Array, or shadow / hash tracking over the emulator's memory, is EINVAL", async () => {
    await expectCode(() => new MigrationDevice({ regions: [{ name: "a", memory: new ArrayBuffer(8) as never }] }), "EINVAL");
    await expectCode(() => new MigrationDevice({ regions: [{ name: "a", memory: new Uint8Array(8) }], tracking: "shadow" }), "EINVAL");
    await expectCode(() => new MigrationDevice({ regions: [{ name: "a", memory: new Uint8Array(8) }], tracking: "hash" }), "EINVAL");
  });
});

describe("whenReadable(signal)", () => {
  it("an aborted wait rejects ECANCELED and leaves no waiter; a later change wakes a new wait", async () => {
    const device = makeDevice();
    const session = asSaving(await device.setState("PRE_COPY"));
    drain(session);
    const controller = new AbortController();
    const waiting = session.whenReadable(controller.signal);
    controller.abort();
    await expectCode(() => waiting, "ECANCELED");
    await expectCode(() => session.whenReadable(controller.signal), "ECANCELED");
    const next = session.whenReadable(new AbortController().signal);
    device.write("bar0", 0, new Uint8Array([1]));
    await next;
    device.free();
  });
});

describe("the package entry", () => {
  it("exports migrationFlags, isMigrationState, the state numbers and openVfioDevice", () => {
    const device = makeDevice({ features: { p2p: false, precopy: true } });
    expect(device.migrationFlags()).toBe(api.VFIO_MIGRATION_STOP_COPY | api.VFIO_MIGRATION_PRE_COPY);
    expect(api.migrationFlags({ p2p: true })).toBe(3);
    expect(api.isMigrationState("PRE_COPY_P2P")).toBe(true);
    expect(api.isMigrationState("PRECOPY")).toBe(false);
    expect(api.MIGRATION_STATE_NUMBERS.RESUMING).toBe(api.VFIO_DEVICE_STATE_RESUMING);
    expect(api.stateToNumber("PRE_COPY")).toBe(api.VFIO_DEVICE_STATE_PRE_COPY);
    expect(typeof api.openVfioDevice).toBe("function");
    device.free();
  });
});
