// The v2 migration device against the libvfio-user test checklist (vfio-migration.md 4.3) where
// it applies: invalid states, callback failures, the data path per state, sessions and the arcs
// that end them, PRE_COPY info, ENOMSG vs end of stream, failed arcs, reset, serialized state changes, quiesce
// deadlines, and the three dirty-tracking modes.
import { describe, expect, it } from "vitest";
import { MigrationError } from "../../src/core/errors.js";
import { ResumingSession } from "../../src/migration/resuming-session.js";
import { SavingSession } from "../../src/migration/saving-session.js";
import { MigrationDevice } from "../../src/migration/v2/migration-device.js";
import { isSavingState, MIGRATION_STATES, stateSupported, type MigrationState } from "../../src/migration/v2/states.js";
import {
  asResuming,
  asSaving,
  concat,
  drain,
  expectCode,
  expectSameBytes,
  FEATURE_SETS,
  fillRandom,
  fillWith,
  makeDevice,
  PAGE,
  resegment,
  rng,
  TRACKINGS,
} from "./helpers.js";

const RUNNING_STATES = new Set<MigrationState>(["RUNNING", "RUNNING_P2P", "PRE_COPY", "PRE_COPY_P2P"]);

/** Puts a RUNNING device with `features` in `state` (ERROR through a failed resume). */
async function reach(device: MigrationDevice, state: MigrationState): Promise<void> {
  if (state === "ERROR") {
    await device.setState("RESUMING");
    await expectCode(() => device.setState("STOP"), "ENODATA");
  } else {
    await device.setState(state);
  }
  expect(device.state).toBe(state);
}

/** A full saved stream of `device` (which is left in STOP). */
async function saveAll(device: MigrationDevice): Promise<Uint8Array> {
  const session = asSaving(await device.setState("STOP_COPY"));
  const { chunks, end } = drain(session);
  expect(end).toBe("eof");
  await device.setState("STOP");
  return concat(chunks);
}

describe("state values", () => {
  it.each([["BOGUS"], [0xabcd], [8], [2], [undefined], [null], ["running"], ["__proto__"], ["constructor"], ["toString"], [{}]])(
    "setState(%s) is refused with EINVAL and changes nothing",
    async (value) => {
      const device = makeDevice();
      const error = await expectCode(() => device.setState(value as unknown as MigrationState), "EINVAL");
      expect(error.state).toBe("RUNNING");
      expect(device.state).toBe("RUNNING");
      expect(device.session).toBeUndefined();
      device.free();
    },
  );

  it("ERROR can never be requested", async () => {
    for (const { features } of FEATURE_SETS) {
      const device = makeDevice({ features });
      for (const from of ["RUNNING", "STOP", "STOP_COPY", "RESUMING"] as const) {
        await device.setState(from);
        const error = await expectCode(() => device.setState("ERROR"), "EINVAL");
        expect(error.state).toBe(from);
        expect(device.state).toBe(from);
      }
      device.free();
    }
  });

  it.each(FEATURE_SETS)("states a device with $name does not support are refused", async ({ features }) => {
    const device = makeDevice({ features });
    for (const target of MIGRATION_STATES) {
      if (target === "ERROR" || stateSupported(target, features)) continue;
      for (const from of ["RUNNING", "STOP"] as const) {
        await device.setState(from);
        await expectCode(() => device.setState(target), "EINVAL");
        expect(device.state).toBe(from);
      }
    }
    device.free();
  });

  it("STOP_COPY -> PRE_COPY / PRE_COPY_P2P is blocked with EINVAL; the session stays usable", async () => {
    const device = makeDevice({ features: { p2p: true, precopy: true } });
    fillRandom(device, 1);
    const session = asSaving(await device.setState("STOP_COPY"));
    for (const target of ["PRE_COPY", "PRE_COPY_P2P"] as const) {
      const error = await expectCode(() => device.setState(target), "EINVAL");
      expect(error.state).toBe("STOP_COPY");
      expect(device.state).toBe("STOP_COPY");
    }
    expect(device.session).toBe(session);
    expect(drain(session).end).toBe("eof");
    device.free();
  });

  it("a request for the current state is a no-op that opens nothing", async () => {
    const device = makeDevice();
    const session = await device.setState("PRE_COPY");
    expect(await device.setState("PRE_COPY")).toBeUndefined();
    expect(device.session).toBe(session);
    expect(await device.setState("PRE_COPY")).toBeUndefined();
    device.free();
  });
});

describe("callback failures propagate their code", () => {
  const cases: ReadonlyArray<{ name: string; thrown: () => unknown; code: string }> = [
    { name: "MigrationError(EIO)", thrown: () => new MigrationError("EIO", "config read failed"), code: "EIO" },
    { name: "MigrationError(ENODEV)", thrown: () => new MigrationError("ENODEV", "device gone"), code: "ENODEV" },
    { name: "MigrationError(ETIMEDOUT)", thrown: () => new MigrationError("ETIMEDOUT", "firmware slow"), code: "ETIMEDOUT" },
    { name: "a plain Error", thrown: () => Object.assign(new Error("boom"), { errno: 0xbeef }), code: "EIO" },
    { name: "a non-Error value", thrown: () => 0xbeef, code: "EIO" },
  ];

  it.each(cases)("saveConfig throwing $name", async ({ thrown, code }) => {
    for (const { features } of FEATURE_SETS) {
      const value = thrown();
      const device = makeDevice({
        features,
        callbacks: {
          saveConfig: async () => {
            throw value;
          },
        },
      });
      const error = await expectCode(() => device.setState("STOP_COPY"), code as never);
      // RUNNING -> STOP_COPY always ends with STOP -> STOP_COPY: that arc failed, STOP was reached.
      expect(error.state).toBe("STOP");
      expect(error.from).toBe("RUNNING");
      expect(error.to).toBe("STOP_COPY");
      expect(error.message).toContain("STOP");
      expect(device.state).toBe("STOP");
      expect(device.session).toBeUndefined();
      // The device's own error is kept as the cause (its errno-like payload included).
      const causes: unknown[] = [];
      for (let e: unknown = error; e instanceof Error; e = e.cause) causes.push(e.cause);
      expect(causes).toContain(value);
      device.free();
    }
  });

  it("a synchronously throwing saveConfig fails the same way", async () => {
    const device = makeDevice({
      callbacks: {
        saveConfig: () => {
          throw new MigrationError("EIO", "sync");
        },
      },
    });
    await expectCode(() => device.setState("STOP_COPY"), "EIO");
    expect(device.state).toBe("STOP");
    device.free();
  });

  it("saveConfig failing on PRE_COPY_P2P -> STOP_COPY leaves PRE_COPY_P2P with the session open", async () => {
    let fail = true;
    const device = makeDevice({
      features: { p2p: true, precopy: true },
      callbacks: {
        saveConfig: () => {
          if (fail) throw new MigrationError("EIO", "not yet");
          return new Uint8Array([1, 2, 3]);
        },
      },
    });
    fillRandom(device, 2);
    const session = asSaving(await device.setState("PRE_COPY"));
    const error = await expectCode(() => device.setState("STOP_COPY"), "EIO");
    expect(error.state).toBe("PRE_COPY_P2P");
    expect(device.state).toBe("PRE_COPY_P2P");
    expect(device.session).toBe(session);
    expect(session.closed).toBe(false);
    // The user may retry: the same session carries on to the end of the stream.
    fail = false;
    expect(await device.setState("STOP_COPY")).toBeUndefined();
    expect(drain(session).end).toBe("eof");
    device.free();
  });

  it.each(cases)("quiesce throwing $name leaves the device running in its previous state", async ({ thrown, code }) => {
    const value = thrown();
    const device = makeDevice({
      features: { p2p: true, precopy: true },
      callbacks: {
        quiesce: () => {
          throw value;
        },
      },
    });
    const error = await expectCode(() => device.setState("STOP"), code as never);
    expect(error.state).toBe("RUNNING");
    expect(device.state).toBe("RUNNING");
    device.write("bar0", 0, new Uint8Array([1]));
    // From PRE_COPY the quiesce happens on PRE_COPY -> PRE_COPY_P2P: the session survives.
    const session = asSaving(await device.setState("PRE_COPY"));
    const again = await expectCode(() => device.setState("STOP_COPY"), code as never);
    expect(again.state).toBe("PRE_COPY");
    expect(device.state).toBe("PRE_COPY");
    expect(device.session).toBe(session);
    expect(session.closed).toBe(false);
    device.free();
  });

  it.each(cases)("loadConfig throwing $name: ERROR, content untouched", async ({ thrown, code }) => {
    const source = makeDevice({ callbacks: { saveConfig: () => new Uint8Array([9, 8, 7]) } });
    fillRandom(source, 3);
    const stream = await saveAll(source);
    const value = thrown();
    const target = makeDevice({
      callbacks: {
        loadConfig: () => {
          throw value;
        },
      },
    });
    fillWith(target, 0x5a);
    const before = target.model.snapshot();
    const session = asResuming(await target.setState("RESUMING"));
    session.write(stream);
    const error = await expectCode(() => target.setState("RUNNING"), code as never);
    expect(error.state).toBe("ERROR");
    expect(target.state).toBe("ERROR");
    expectSameBytes(target.model.snapshot(), before);
    target.reset();
    expect(target.state).toBe("RUNNING");
    expectSameBytes(target.model.snapshot(), before);
    source.free();
    target.free();
  });

  it("loadConfig receives the blob saveConfig gave, before the content is committed", async () => {
    const blob = new Uint8Array([1, 2, 3, 4, 5]);
    const source = makeDevice({ callbacks: { saveConfig: async () => blob } });
    fillRandom(source, 4);
    const stream = await saveAll(source);
    let seen: Uint8Array | undefined;
    let contentAtLoad: Uint8Array | undefined;
    const target = makeDevice({
      callbacks: {
        loadConfig: async (config) => {
          seen = config.slice();
          contentAtLoad = target.model.snapshot();
        },
      },
    });
    const prior = target.model.snapshot();
    asResuming(await target.setState("RESUMING")).write(stream);
    await target.setState("RUNNING");
    expect(seen).toEqual(blob);
    expectSameBytes(contentAtLoad!, prior);
    expectSameBytes(target.model.snapshot(), source.model.snapshot());
    source.free();
    target.free();
  });

  it("a target that needs a config refuses a stream without one (ERROR, untouched)", async () => {
    const source = makeDevice();
    fillRandom(source, 5);
    const stream = await saveAll(source);
    const target = makeDevice({ callbacks: { loadConfig: () => undefined } });
    fillWith(target, 0x33);
    const before = target.model.digest();
    asResuming(await target.setState("RESUMING")).write(stream);
    const error = await expectCode(() => target.setState("STOP"), "EBADMSG");
    expect(error.state).toBe("ERROR");
    expect(target.model.digest()).toBe(before);
    source.free();
    target.free();
  });
});

describe("data path per state", () => {
  it.each(FEATURE_SETS)("$name: a saving session exists exactly in the saving states, a resuming one in RESUMING", async ({ features }) => {
    const device = makeDevice({ features });
    for (const state of MIGRATION_STATES) {
      if (state !== "ERROR" && !stateSupported(state, features)) continue;
      device.reset();
      await reach(device, state);
      if (isSavingState(state)) expect(device.session).toBeInstanceOf(SavingSession);
      else if (state === "RESUMING") expect(device.session).toBeInstanceOf(ResumingSession);
      else expect(device.session).toBeUndefined();
      expect(device.running).toBe(RUNNING_STATES.has(state));
    }
    device.free();
  });

  it("setState returns the session the path opened", async () => {
    const device = makeDevice({ features: { p2p: true, precopy: true } });
    expect(await device.setState("PRE_COPY")).toBeInstanceOf(SavingSession);
    // PRE_COPY -> RESUMING closes the saving session and opens a resuming one.
    const saving = device.session as SavingSession;
    const resuming = await device.setState("RESUMING");
    expect(resuming).toBeInstanceOf(ResumingSession);
    expect(saving.closed).toBe(true);
    device.reset();
    expect(await device.setState("RUNNING_P2P")).toBeUndefined();
    const pre = await device.setState("PRE_COPY_P2P");
    expect(pre).toBeInstanceOf(SavingSession);
    // Moves inside the saving group keep the session and open none.
    expect(await device.setState("PRE_COPY")).toBeUndefined();
    expect(await device.setState("STOP_COPY")).toBeUndefined();
    expect(device.session).toBe(pre);
    device.free();
  });

  const closing: ReadonlyArray<{ arc: string; features: { p2p: boolean; precopy: boolean }; open: MigrationState; close: MigrationState }> = [
    { arc: "STOP_COPY -> STOP", features: { p2p: false, precopy: false }, open: "STOP_COPY", close: "STOP" },
    { arc: "PRE_COPY -> RUNNING", features: { p2p: false, precopy: true }, open: "PRE_COPY", close: "RUNNING" },
    { arc: "PRE_COPY -> RUNNING (with P2P)", features: { p2p: true, precopy: true }, open: "PRE_COPY", close: "RUNNING" },
    { arc: "PRE_COPY_P2P -> RUNNING_P2P", features: { p2p: true, precopy: true }, open: "PRE_COPY_P2P", close: "RUNNING_P2P" },
  ];

  it.each(closing)("$arc closes the saving session: reads are refused afterwards", async ({ features, open, close }) => {
    const device = makeDevice({ features });
    fillRandom(device, 6);
    const session = asSaving(await device.setState(open));
    expect(session.read(100)).toBeInstanceOf(Uint8Array);
    await device.setState(close);
    expect(device.session).toBeUndefined();
    expect(session.closed).toBe(true);
    await expectCode(() => session.read(), "EINVAL");
    await expectCode(() => session.read(1), "EINVAL");
    // A new saving session starts from the beginning: a full stream again.
    const again = asSaving(await device.setState("STOP_COPY"));
    expect(again).not.toBe(session);
    const stream = concat(drain(again).chunks);
    await device.setState("STOP");
    const target = makeDevice({ features });
    asResuming(await target.setState("RESUMING")).write(stream);
    await target.setState("RUNNING");
    expect(target.model.digest()).toBe(device.model.digest());
    device.free();
    target.free();
  });

  it("RESUMING -> STOP closes the resuming session: writes are refused afterwards", async () => {
    const source = makeDevice();
    fillRandom(source, 7);
    const stream = await saveAll(source);
    const target = makeDevice();
    const session = asResuming(await target.setState("RESUMING"));
    session.write(stream);
    await target.setState("STOP");
    expect(session.closed).toBe(true);
    expect(target.session).toBeUndefined();
    await expectCode(() => session.write(new Uint8Array(1)), "EINVAL");
    await expectCode(() => session.finish(), "EINVAL");
    source.free();
    target.free();
  });

  it("a resuming session takes only bytes, in any segmentation", async () => {
    const source = makeDevice();
    fillRandom(source, 8);
    const stream = await saveAll(source);
    const target = makeDevice();
    const session = asResuming(await target.setState("RESUMING"));
    await expectCode(() => session.write("abc" as unknown as Uint8Array), "EINVAL");
    await expectCode(() => session.write([1, 2] as unknown as Uint8Array), "EINVAL");
    const random = rng(8);
    let written = 0;
    session.write(new Uint8Array(0));
    for (const piece of resegment(stream, random, 700)) written += session.write(piece);
    expect(written).toBe(stream.length);
    expect(session.bytesWritten).toBe(stream.length);
    await target.setState("RUNNING");
    expectSameBytes(target.model.snapshot(), source.model.snapshot());
    source.free();
    target.free();
  });

  it("reads honour the size asked for and refuse invalid sizes", async () => {
    const device = makeDevice();
    fillRandom(device, 9);
    const session = asSaving(await device.setState("STOP_COPY"));
    for (const bad of [0, -1, 1.5, Number.NaN]) await expectCode(() => session.read(bad), "EINVAL");
    const { chunks } = drain(session, [], 333);
    expect(chunks.every((c) => c.length <= 333)).toBe(true);
    expect(session.bytesRead).toBe(chunks.reduce((n, c) => n + c.length, 0));
    device.free();
  });

  it("STOP_COPY ends with a permanent end of stream, never ENOMSG", async () => {
    const device = makeDevice();
    fillRandom(device, 10);
    const session = asSaving(await device.setState("STOP_COPY"));
    expect(drain(session).end).toBe("eof");
    for (let i = 0; i < 3; i++) expect(session.read()).toBeNull();
    device.free();
  });

  it("writes and markDirty are refused whenever the device is not running", async () => {
    for (const { features } of FEATURE_SETS) {
      const device = makeDevice({ features });
      for (const state of MIGRATION_STATES) {
        if (state !== "ERROR" && !stateSupported(state, features)) continue;
        device.reset();
        await reach(device, state);
        const before = device.model.digest();
        if (RUNNING_STATES.has(state)) {
          device.write("bar0", 0, new Uint8Array([state.length]));
          device.markDirty("bar0", 0, 1);
        } else {
          const error = await expectCode(() => device.write("bar0", 0, new Uint8Array([0xff])), "EINVAL");
          expect(error.state).toBe(state);
          await expectCode(() => device.markDirty("bar0", 0, 1), "EINVAL");
          expect(device.model.digest()).toBe(before);
        }
      }
      device.free();
    }
  });

  it("writes outside a region are refused", async () => {
    const device = makeDevice();
    await expectCode(() => device.write("bar0", 16 * PAGE - 1, new Uint8Array(2)), "EINVAL");
    await expectCode(() => device.write("bar0", -1, new Uint8Array(1)), "EINVAL");
    await expectCode(() => device.write("nope", 0, new Uint8Array(1)), "EINVAL");
    await expectCode(() => device.write(7, 0, new Uint8Array(1)), "EINVAL");
    await expectCode(() => device.markDirty("ram", 0, 41 * PAGE), "EINVAL");
    device.free();
  });
});

describe.each(TRACKINGS)("PRE_COPY info and ENOMSG (%s tracking)", (tracking) => {
  it("is only available in the PRE_COPY states", async () => {
    const device = makeDevice({ tracking, features: { p2p: true, precopy: true } });
    for (const state of MIGRATION_STATES) {
      device.reset();
      await reach(device, state);
      if (state === "PRE_COPY" || state === "PRE_COPY_P2P") {
        const info = device.precopyInfo();
        expect(info.initialBytes).toBeGreaterThan(0);
      } else {
        const error = await expectCode(() => device.precopyInfo(), "EINVAL");
        expect(error.state).toBe(state);
      }
    }
    device.free();
  });

  it("initial shrinks as it is read, dirty grows as the device writes and shrinks as it is read", async () => {
    const device = makeDevice({ tracking });
    fillRandom(device, 11);
    const session = asSaving(await device.setState("PRE_COPY"));
    let info = device.precopyInfo();
    expect(info.dirtyBytes).toBe(0);
    expect(info.initialBytes).toBeGreaterThanOrEqual(device.model.size);
    let previous = info.initialBytes;
    for (;;) {
      let chunk: Uint8Array | null;
      try {
        chunk = session.read(2000);
      } catch (error) {
        expect((error as MigrationError).code).toBe("ENOMSG");
        break;
      }
      expect(chunk).not.toBeNull();
      info = device.precopyInfo();
      expect(info.initialBytes).toBeLessThanOrEqual(previous);
      expect(info.dirtyBytes).toBe(0);
      previous = info.initialBytes;
    }
    // Nothing left now: both are 0, and that is exactly when reads fail with ENOMSG.
    expect(device.precopyInfo()).toEqual({ initialBytes: 0, dirtyBytes: 0 });
    await expectCode(() => session.read(), "ENOMSG");
    expect(session.rounds.length).toBe(1);

    // Two pages dirtied (one of them the partial last page of "ram"), then a third.
    device.write(
      "bar0",
      3 * PAGE + 5,
      new Uint8Array([1, 2, 3]).map((v) => v ^ device.model.view("bar0")[3 * PAGE + 5]!),
    );
    device.write(
      "ram",
      40 * PAGE + 100,
      new Uint8Array([7]).map((v) => v ^ device.model.view("ram")[40 * PAGE + 100]!),
    );
    expect(device.precopyInfo()).toEqual({ initialBytes: 0, dirtyBytes: 2 * PAGE });
    device.write(
      "config-space",
      0,
      new Uint8Array([0xaa]).map((v) => v ^ device.model.view("config-space")[0]!),
    );
    expect(device.precopyInfo()).toEqual({ initialBytes: 0, dirtyBytes: 3 * PAGE });
    // Asking again does not change the answer (hash/shadow scans are idempotent).
    expect(device.precopyInfo()).toEqual({ initialBytes: 0, dirtyBytes: 3 * PAGE });
    const { end } = drain(session, [], 1000);
    expect(end).toBe("enomsg");
    expect(device.precopyInfo()).toEqual({ initialBytes: 0, dirtyBytes: 0 });
    expect(session.rounds.map((r) => r.pages)).toEqual([REGION_PAGES, 3]);
    device.free();
  });

  it("a page the first pass has not sent yet is not dirty (dirty is relative to data read)", async () => {
    const device = makeDevice({ tracking });
    fillRandom(device, 12);
    await device.setState("PRE_COPY");
    device.write("ram", 39 * PAGE, new Uint8Array(PAGE).fill(0x77));
    const info = device.precopyInfo();
    expect(info.dirtyBytes).toBe(0);
    expect(info.initialBytes).toBeGreaterThanOrEqual(device.model.size);
    device.free();
  });

  it("a full stream read in PRE_COPY then STOP_COPY resumes to the same state", async () => {
    const device = makeDevice({ tracking });
    fillRandom(device, 13);
    const session = asSaving(await device.setState("PRE_COPY"));
    const chunks: Uint8Array[] = [];
    const random = rng(13);
    for (let round = 0; round < 4; round++) {
      drain(session, chunks, 3000);
      for (let i = 0; i < 5; i++) {
        const r = device.model.regions[Math.floor(random() * 3)]!;
        const at = Math.floor(random() * r.size);
        device.write(r.name, at, new Uint8Array([Math.floor(random() * 256)]));
      }
    }
    await device.setState("STOP_COPY");
    expect(drain(session, chunks, 3000).end).toBe("eof");
    await device.setState("STOP");
    const target = makeDevice({ tracking });
    const resuming = asResuming(await target.setState("RESUMING"));
    for (const c of chunks) resuming.write(c);
    await target.setState("RUNNING");
    expect(target.model.digest()).toBe(device.model.digest());
    expectSameBytes(target.model.snapshot(), device.model.snapshot());
    device.free();
    target.free();
  });

  it("a page sent between two changes is sent again when it changes back (no ABA loss)", async () => {
    // An 8-window region of incompressible data, so that reads return mid-pass (a read hands
    // over a window's records once the next window closed them); page P sits in the fifth
    // window. P is X when the pass selects it, B when it is sent, X again before the pass ends.
    // The test checks that this schedule really happened: B must reach the stream while the
    // pass is still going.
    const size = 8 << 20;
    const P = (4 * 256 + 100) * PAGE;
    const device = new MigrationDevice({ regions: [{ name: "ram", size }], tracking });
    const random = rng(14);
    device.write("ram", 0, randomRegion(random, size));
    const session = asSaving(await device.setState("PRE_COPY"));
    const out: Uint8Array[] = [];
    drain(session, out);
    device.write("ram", 0, randomRegion(random, size));
    device.write("ram", P, new Uint8Array(PAGE).fill(0x22));
    const rounds = session.rounds.length;
    out.push(session.read(1 << 30)!);
    device.write("ram", P, new Uint8Array(PAGE).fill(0xee));
    const fresh: Uint8Array[] = [];
    while (!containsRun(fresh, 0xee, PAGE)) {
      const chunk = session.read(1 << 30)!;
      fresh.push(chunk);
      out.push(chunk);
    }
    expect(session.rounds.length).toBe(rounds); // still inside the same pass
    device.write("ram", P, new Uint8Array(PAGE).fill(0x22));
    drain(session, out);
    await device.setState("STOP_COPY");
    drain(session, out);
    await device.setState("STOP");
    const target = new MigrationDevice({ regions: [{ name: "ram", size }], tracking });
    const resuming = asResuming(await target.setState("RESUMING"));
    for (const c of out) resuming.write(c);
    await target.setState("RUNNING");
    expect(target.model.view("ram")[P]).toBe(0x22);
    expect(target.model.digest()).toBe(device.model.digest());
    device.free();
    target.free();
  });
});

// Pages of REGIONS: 1 + 16 + 41.
const REGION_PAGES = 58;

function randomRegion(random: () => number, size: number): Uint8Array {
  const out = new Uint8Array(size);
  const words = new Uint32Array(out.buffer);
  for (let i = 0; i < words.length; i++) words[i] = Math.floor(random() * 4294967296);
  return out;
}

function containsRun(chunks: readonly Uint8Array[], value: number, length: number): boolean {
  let run = 0; // records may straddle chunks
  for (const c of chunks) {
    for (let i = 0; i < c.length; i++) {
      run = c[i] === value ? run + 1 : 0;
      if (run >= length) return true;
    }
  }
  return false;
}

describe("PRE_COPY data reaches the reader before the device stops", () => {
  // KNOWN BUG (not fixable here): StreamEncoder keeps its output in core memory until 1 MiB has
  // accumulated (or the stream ends) and has no public flush, so SavingSession.read() sees
  // nothing and throws ENOMSG while the pre-copy pass sits in the encoder; it all comes out at
  // STOP_COPY, defeating pre-copy. Needs StreamEncoder.flush() called by SavingSession after
  // each window and round marker. Remove `.fails` when fixed.
  it.each(TRACKINGS)("%s: the first pass is readable in PRE_COPY, and ENOMSG comes only with info {0, 0}", async (tracking) => {
    const device = makeDevice({ tracking });
    fillRandom(device, 15);
    const session = asSaving(await device.setState("PRE_COPY"));
    expect(drain(session).end).toBe("enomsg");
    expect(session.bytesRead).toBeGreaterThan(device.model.size);
    device.write("bar0", 0, new Uint8Array(PAGE).fill(1));
    expect(device.precopyInfo().dirtyBytes).toBeGreaterThan(0);
    expect(session.read()).toBeInstanceOf(Uint8Array);
    device.free();
  });
});

describe("failed arcs", () => {
  it("the error names the last state reached, and the device is there", async () => {
    let failAt: "quiesce" | "save" | undefined;
    const device = makeDevice({
      features: { p2p: true, precopy: true },
      callbacks: {
        quiesce: () => {
          if (failAt === "quiesce") throw new MigrationError("EIO", "dma stuck");
        },
        saveConfig: () => {
          if (failAt === "save") throw new MigrationError("EIO", "config");
          return new Uint8Array(1);
        },
      },
    });
    // RUNNING -> STOP_COPY is RUNNING -> RUNNING_P2P -> STOP -> STOP_COPY.
    failAt = "quiesce";
    let error = await expectCode(() => device.setState("STOP_COPY"), "EIO");
    expect([error.state, device.state]).toEqual(["RUNNING", "RUNNING"]);
    failAt = "save";
    error = await expectCode(() => device.setState("STOP_COPY"), "EIO");
    expect([error.state, device.state, error.from, error.to]).toEqual(["STOP", "STOP", "RUNNING", "STOP_COPY"]);
    expect(error.message).toMatch(/STOP -> STOP_COPY/);
    // From where it stopped the user may go on elsewhere.
    failAt = undefined;
    await device.setState("RUNNING");
    expect(device.state).toBe("RUNNING");
    device.free();
  });

  it("a refused step of a combination transition names the state it was refused in", async () => {
    const device = makeDevice({ features: { p2p: false, precopy: false } });
    await device.setState("STOP_COPY");
    const error = await expectCode(() => device.setState("RUNNING_P2P"), "EINVAL");
    expect(error.state).toBe("STOP_COPY");
    expect(device.state).toBe("STOP_COPY");
    device.free();
  });

  it("leaving RESUMING with a bad stream: ERROR, and only reset leaves it", async () => {
    const device = makeDevice();
    fillWith(device, 0x42);
    const before = device.model.snapshot();
    const session = asResuming(await device.setState("RESUMING"));
    await expectCode(() => session.write(new Uint8Array(64).fill(0xab)), "EBADMSG");
    const error = await expectCode(() => device.setState("RUNNING"), "EBADMSG");
    expect(error.state).toBe("ERROR");
    expect(device.state).toBe("ERROR");
    expect(device.session).toBeUndefined();
    for (const target of MIGRATION_STATES.filter((s) => s !== "ERROR")) {
      await expectCode(() => device.setState(target), "EINVAL");
      expect(device.state).toBe("ERROR");
    }
    expectSameBytes(device.model.snapshot(), before);
    device.reset();
    expect(device.state).toBe("RUNNING");
    expectSameBytes(device.model.snapshot(), before);
    device.free();
  });
});

describe("enterError", () => {
  it("ends the session, keeps the content, refuses every state until reset", async () => {
    const device = makeDevice({ features: { p2p: false, precopy: true } });
    fillWith(device, 0x17);
    const before = device.model.snapshot();
    const session = asSaving(await device.setState("PRE_COPY"));
    device.enterError();
    expect(device.state).toBe("ERROR");
    expect(device.session).toBeUndefined();
    expect(session.closed).toBe(true);
    await expectCode(() => device.setState("RUNNING"), "EINVAL");
    expectSameBytes(device.model.snapshot(), before);
    device.reset();
    expect(device.state).toBe("RUNNING");
    device.free();
  });

  it("is EBUSY while a state change is in progress", async () => {
    let release: () => void = () => undefined;
    let entered: () => void = () => undefined;
    const quiescing = new Promise<void>((resolve) => (entered = resolve));
    const device = makeDevice({
      features: { p2p: true, precopy: false },
      callbacks: {
        quiesce: () => {
          entered();
          return new Promise<void>((resolve) => (release = resolve));
        },
      },
    });
    const pending = device.setState("STOP");
    await quiescing;
    await expectCode(() => device.enterError(), "EBUSY");
    release();
    await pending;
    expect(device.state).toBe("STOP");
    device.free();
  });
});

describe("reset", () => {
  it.each(FEATURE_SETS)("$name: from every state back to RUNNING, ending any session", async ({ features }) => {
    for (const state of MIGRATION_STATES) {
      if (state !== "ERROR" && !stateSupported(state, features)) continue;
      const device = makeDevice({ features });
      fillRandom(device, 16);
      const content = device.model.digest();
      await reach(device, state);
      const session = device.session;
      device.reset();
      expect(device.state).toBe("RUNNING");
      expect(device.session).toBeUndefined();
      expect(device.running).toBe(true);
      if (session instanceof SavingSession) {
        expect(session.closed).toBe(true);
        await expectCode(() => session.read(), "EINVAL");
      } else if (session instanceof ResumingSession) {
        expect(session.closed).toBe(true);
        await expectCode(() => session.write(new Uint8Array(1)), "EINVAL");
      }
      expect(device.model.digest()).toBe(content);
      // And the device works again: a full migration out of it.
      const stream = await saveAll(device);
      const target = makeDevice({ features });
      asResuming(await target.setState("RESUMING")).write(stream);
      await target.setState("RUNNING");
      expect(target.model.digest()).toBe(content);
      device.free();
      target.free();
    }
  });

  it("abandons a half-written resume without touching the content", async () => {
    const source = makeDevice();
    fillRandom(source, 17);
    const stream = await saveAll(source);
    const target = makeDevice();
    fillWith(target, 0x11);
    const before = target.model.digest();
    asResuming(await target.setState("RESUMING")).write(stream.subarray(0, stream.length >> 1));
    target.reset();
    expect(target.model.digest()).toBe(before);
    source.free();
    target.free();
  });
});

describe("concurrency and quiesce", () => {
  it("the kernel serializes callers on its state mutex: a second setState waits its turn instead of EBUSY", async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const device = makeDevice({ features: { p2p: true, precopy: true }, callbacks: { quiesce: () => gate } });
    const order: string[] = [];
    const first = device.setState("RUNNING_P2P").then(() => order.push(`first ${device.state}`));
    const second = device.setState("STOP").then(() => order.push(`second ${device.state}`));
    await new Promise((r) => setTimeout(r, 5));
    expect(order).toEqual([]);
    expect(device.state).toBe("RUNNING");
    release();
    await Promise.all([first, second]);
    expect(order).toEqual(["first RUNNING_P2P", "second STOP"]);
    device.free();
  });

  it("intermediate states are not visible: while RUNNING -> STOP_COPY waits on saveConfig the device reads RUNNING", async () => {
    let release!: (b: Uint8Array) => void;
    const device = makeDevice({ callbacks: { saveConfig: () => new Promise<Uint8Array>((r) => (release = r)) } });
    const first = device.setState("STOP_COPY");
    await new Promise((r) => setTimeout(r, 5));
    expect(device.state).toBe("RUNNING");
    // ...although the device itself has stopped: the workload may not write any more.
    expect(device.running).toBe(false);
    const second = device.setState("RUNNING");
    release(new Uint8Array(4));
    asSaving(await first);
    expect(device.state).toBe("STOP_COPY");
    await second;
    expect(device.state).toBe("RUNNING");
    device.free();
  });

  it("a state change that failed does not leave the device busy", async () => {
    const device = makeDevice({ callbacks: { saveConfig: () => Promise.reject(new Error("x")) } });
    await expectCode(() => device.setState("STOP_COPY"), "EIO");
    await device.setState("RUNNING");
    expect(device.state).toBe("RUNNING");
    device.free();
  });

  it.each([
    { from: "RUNNING" as const, target: "STOP" as const },
    { from: "RUNNING" as const, target: "RUNNING_P2P" as const },
    { from: "PRE_COPY" as const, target: "STOP_COPY" as const },
    { from: "PRE_COPY" as const, target: "PRE_COPY_P2P" as const },
  ])("quiesce past its deadline ($from -> $target): ETIMEDOUT, still running in $from", async ({ from, target }) => {
    let signal: AbortSignal | undefined;
    let cooperative = false;
    const device = makeDevice({
      features: { p2p: true, precopy: true },
      quiesceTimeoutMs: 30,
      callbacks: {
        quiesce: (s) => {
          signal = s;
          if (cooperative) return;
          return new Promise<void>(() => undefined); // never drains
        },
      },
    });
    const session = await device.setState(from);
    const started = performance.now();
    const error = await expectCode(() => device.setState(target), "ETIMEDOUT");
    expect(performance.now() - started).toBeGreaterThanOrEqual(25);
    expect(error.state).toBe(from);
    expect(device.state).toBe(from);
    expect(device.running).toBe(true);
    expect(device.session).toBe(session);
    expect(signal?.aborted).toBe(true);
    device.write("bar0", 0, new Uint8Array([5]));
    // Not stuck: a quiesce that completes in time lets the same request through.
    cooperative = true;
    await device.setState(target);
    expect(device.state).toBe(target);
    device.free();
  });

  it("quiesce runs on entering the P2P states from running ones, and only then", async () => {
    const calls: string[] = [];
    const device = makeDevice({
      features: { p2p: true, precopy: true },
      callbacks: { quiesce: () => void calls.push(device.state) },
    });
    await device.setState("RUNNING_P2P"); // RUNNING -> RUNNING_P2P
    await device.setState("STOP");
    await device.setState("RUNNING_P2P"); // from STOP: nothing to drain
    await device.setState("RUNNING");
    await device.setState("PRE_COPY");
    await device.setState("PRE_COPY_P2P"); // PRE_COPY -> PRE_COPY_P2P
    await device.setState("STOP_COPY");
    expect(calls).toEqual(["RUNNING", "PRE_COPY"]);
    device.free();
  });
});

describe("reset during a state change", () => {
  it("wins over an arc still awaiting its quiesce: the change fails with ECANCELED, the device stays RUNNING", async () => {
    let release: () => void = () => undefined;
    let hold = true;
    const device = new MigrationDevice({
      regions: [{ name: "ram", size: 64 * 1024 }],
      // The first quiesce waits until released; later ones finish at once.
      callbacks: { quiesce: () => (hold ? new Promise<void>((resolve) => (release = resolve)) : undefined) },
    });
    try {
      const change = device.setState("RUNNING_P2P");
      await new Promise((resolve) => setImmediate(resolve));
      device.reset();
      hold = false;
      release();
      await expect(change).rejects.toMatchObject({ code: "ECANCELED" });
      expect(device.state).toBe("RUNNING");
      // The device is usable again at once.
      await device.setState("STOP");
      expect(device.state).toBe("STOP");
    } finally {
      device.free();
    }
  });
});

describe("reset while an arc awaits a callback", () => {
  it("during loadConfig on leaving RESUMING: nothing is committed, later writes survive", async () => {
    const regions = [{ name: "ram", size: 16 * 1024 }];
    const source = new MigrationDevice({ regions, callbacks: { saveConfig: () => Uint8Array.of(1) } });
    source.write("ram", 0, Uint8Array.of(0xaa));
    const chunks: Uint8Array[] = [];
    const saving = (await source.setState("STOP_COPY")) as SavingSession;
    for (let c = saving.read(); c !== null; c = saving.read()) chunks.push(c);
    let release: () => void = () => undefined;
    const target = new MigrationDevice({ regions, callbacks: { loadConfig: () => new Promise<void>((resolve) => (release = resolve)) } });
    try {
      await target.setState("STOP");
      const resuming = (await target.setState("RESUMING")) as ResumingSession;
      for (const c of chunks) resuming.write(c);
      const leaving = target.setState("RUNNING");
      await new Promise((resolve) => setImmediate(resolve));
      target.reset();
      target.write("ram", 0, Uint8Array.of(0x55));
      release();
      await expect(leaving).rejects.toMatchObject({ code: "ECANCELED" });
      expect(target.state).toBe("RUNNING");
      expect(target.model.view("ram")[0]).toBe(0x55);
      expect(target.session).toBeUndefined();
    } finally {
      source.free();
      target.free();
    }
  });

  it("during saveConfig entering STOP_COPY: no stale session is left open", async () => {
    let release: (blob: Uint8Array) => void = () => undefined;
    const device = new MigrationDevice({
      regions: [{ name: "ram", size: 16 * 1024 }],
      callbacks: { saveConfig: () => new Promise<Uint8Array>((resolve) => (release = resolve)) },
    });
    try {
      await device.setState("STOP");
      const entering = device.setState("STOP_COPY");
      await new Promise((resolve) => setImmediate(resolve));
      device.reset();
      release(Uint8Array.of(1));
      await expect(entering).rejects.toMatchObject({ code: "ECANCELED" });
      expect(device.state).toBe("RUNNING");
      expect(device.session).toBeUndefined();
    } finally {
      device.free();
    }
  });
});

describe("reset releases an arc stuck in a callback", () => {
  it("a quiesce that never returns: reset makes setState fail with ECANCELED at once", async () => {
    const device = new MigrationDevice({ regions: [{ name: "ram", size: 16 * 1024 }], callbacks: { quiesce: () => new Promise<void>(() => undefined) } });
    try {
      const stuck = device.setState("RUNNING_P2P");
      await new Promise((resolve) => setImmediate(resolve));
      device.reset();
      await expect(stuck).rejects.toMatchObject({ code: "ECANCELED" });
      expect(device.state).toBe("RUNNING");
    } finally {
      device.free();
    }
  });
});
