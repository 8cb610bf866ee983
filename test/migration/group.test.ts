// Device groups: several devices that may DMA to each other. No device may stop while a peer can
// still DMA into it, so every P2P-capable running device reaches RUNNING_P2P / PRE_COPY_P2P
// before any leaves the running states, with rollback when one cannot quiesce in time.
import { describe, expect, it } from "vitest";
import { DeviceGroup } from "../../src/migration/group.js";
import { SavingSession } from "../../src/migration/saving-session.js";
import type { MigrationDevice, DeviceCallbacks } from "../../src/migration/v2/migration-device.js";
import type { MigrationFeatures, MigrationState } from "../../src/migration/v2/states.js";
import { asResuming, asSaving, concat, drain, expectCode, fillRandom, makeDevice, PAGE } from "./helpers.js";

const RUNNING = new Set<MigrationState>(["RUNNING", "RUNNING_P2P", "PRE_COPY", "PRE_COPY_P2P"]);

interface Event {
  device: string;
  what: "quiesce" | "saveConfig" | "state";
  state: MigrationState;
  /** Every device's state at that moment, by id. */
  all: Record<string, MigrationState>;
}

/** Devices whose callbacks and state changes are logged with everyone's state at the time. */
function observedGroup(specs: ReadonlyArray<{ id: string; features?: MigrationFeatures; quiesce?: DeviceCallbacks["quiesce"]; quiesceTimeoutMs?: number }>): {
  devices: MigrationDevice[];
  events: Event[];
} {
  const events: Event[] = [];
  const devices: MigrationDevice[] = [];
  const all = (): Record<string, MigrationState> => Object.fromEntries(devices.map((d) => [d.deviceId, d.state]));
  for (const spec of specs) {
    const device: MigrationDevice = makeDevice({
      deviceId: spec.id,
      features: spec.features ?? { p2p: true, precopy: true },
      ...(spec.quiesceTimeoutMs !== undefined ? { quiesceTimeoutMs: spec.quiesceTimeoutMs } : {}),
      regions: [{ name: "bar", size: 4 * PAGE }],
      callbacks: {
        quiesce: async (signal) => {
          events.push({ device: spec.id, what: "quiesce", state: device.state, all: all() });
          await spec.quiesce?.(signal);
        },
        saveConfig: () => {
          events.push({ device: spec.id, what: "saveConfig", state: device.state, all: all() });
          return new TextEncoder().encode(spec.id);
        },
      },
    });
    // Observe every completed setState of the device (each step is visible as the state after it).
    const setState = device.setState.bind(device);
    device.setState = async (target) => {
      try {
        return await setState(target);
      } finally {
        events.push({ device: spec.id, what: "state", state: device.state, all: all() });
      }
    };
    devices.push(device);
  }
  return { devices, events };
}

describe("forming a group", () => {
  it("refuses several devices when one lacks P2P", () => {
    const a = makeDevice({ deviceId: "a", features: { p2p: true, precopy: true } });
    const b = makeDevice({ deviceId: "b", features: { p2p: false, precopy: true } });
    let caught: unknown;
    try {
      new DeviceGroup([a, b]);
    } catch (error) {
      caught = error;
    }
    expect((caught as { code?: string }).code).toBe("EINVAL");
    expect((caught as Error).message).toContain('"b"');
    expect(() => new DeviceGroup([b, b], { allowWithoutP2p: true })).toThrow(/twice/);
    expect(() => new DeviceGroup([])).toThrow(/at least one/);
  });

  it("accepts them with allowWithoutP2p, and a single device without P2P as is", () => {
    const a = makeDevice({ deviceId: "a", features: { p2p: true } });
    const b = makeDevice({ deviceId: "b", features: { p2p: false } });
    expect(new DeviceGroup([a, b], { allowWithoutP2p: true }).devices).toEqual([a, b]);
    expect(new DeviceGroup([b]).devices).toEqual([b]);
    expect(new DeviceGroup([a, makeDevice({ deviceId: "c" })]).devices.length).toBe(2);
  });
});

describe("every device reaches a P2P state before any leaves the running states", () => {
  it.each(["STOP", "STOP_COPY", "RESUMING"] as const)("RUNNING -> %s", async (target) => {
    const { devices, events } = observedGroup([{ id: "a" }, { id: "b" }, { id: "c" }]);
    const sessions = await new DeviceGroup(devices).setState(target);
    expect(devices.map((d) => d.state)).toEqual([target, target, target]);
    // Each quiesce happened while nobody had left the running states.
    const quiesces = events.filter((e) => e.what === "quiesce");
    expect(quiesces.map((e) => e.device)).toEqual(["a", "b", "c"]);
    for (const e of quiesces) expect(Object.values(e.all).every((s) => RUNNING.has(s))).toBe(true);
    // The first observation of any device outside the running states comes after the last quiesce,
    // and at that time every device was in RUNNING_P2P or beyond.
    const firstStop = events.findIndex((e) => Object.values(e.all).some((s) => !RUNNING.has(s)));
    const lastQuiesce = events.lastIndexOf(quiesces.at(-1)!);
    expect(firstStop).toBeGreaterThan(lastQuiesce);
    const atFirstStop = events[firstStop]!.all;
    for (const s of Object.values(atFirstStop)) expect(["RUNNING_P2P", "STOP", "STOP_COPY", "RESUMING"]).toContain(s);
    if (target === "STOP_COPY") for (const s of sessions) expect(s).toBeInstanceOf(SavingSession);
  });

  it("devices in pre-copy go to PRE_COPY_P2P first and keep their sessions", async () => {
    const { devices, events } = observedGroup([{ id: "a" }, { id: "b" }]);
    const group = new DeviceGroup(devices);
    const sessions = await group.setState("PRE_COPY");
    expect(devices.map((d) => d.state)).toEqual(["PRE_COPY", "PRE_COPY"]);
    events.length = 0;
    const stopped = await group.setState("STOP_COPY");
    // Moving inside the saving group opens nothing new: the pre-copy sessions carry on.
    expect(stopped).toEqual([undefined, undefined]);
    expect(devices.map((d) => d.session)).toEqual(sessions);
    const saves = events.filter((e) => e.what === "saveConfig");
    expect(saves.length).toBe(2);
    expect(saves[0]!.all).toEqual({ a: "PRE_COPY_P2P", b: "PRE_COPY_P2P" });
    for (const d of devices) expect(drain(asSaving(d.session)).end).toBe("eof");
  });

  it("a device without P2P (allowed) stops only after the P2P-capable ones quiesced", async () => {
    const { devices, events } = observedGroup([{ id: "plain", features: { p2p: false, precopy: false } }, { id: "a" }, { id: "b" }]);
    await new DeviceGroup(devices, { allowWithoutP2p: true }).setState("STOP");
    const plainStopped = events.find((e) => e.device === "plain" && e.what === "state")!;
    expect(plainStopped.all).toEqual({ plain: "STOP", a: "RUNNING_P2P", b: "RUNNING_P2P" });
    expect(devices.map((d) => d.state)).toEqual(["STOP", "STOP", "STOP"]);
  });

  it("starting again: every stopped device reaches RUNNING_P2P before any is fully running", async () => {
    const { devices, events } = observedGroup([{ id: "a" }, { id: "b" }, { id: "c" }]);
    const group = new DeviceGroup(devices);
    await group.setState("STOP");
    events.length = 0;
    await group.setState("RUNNING");
    expect(devices.map((d) => d.state)).toEqual(["RUNNING", "RUNNING", "RUNNING"]);
    const firstRunning = events.find((e) => Object.values(e.all).includes("RUNNING"))!;
    expect(firstRunning.all).toEqual({ a: "RUNNING", b: "RUNNING_P2P", c: "RUNNING_P2P" });
  });

  it("a group migrates end to end into another group", async () => {
    const { devices } = observedGroup([{ id: "a" }, { id: "b" }]);
    devices.forEach((d, i) => fillRandom(d, 200 + i));
    const sessions = await new DeviceGroup(devices).setState("STOP_COPY");
    const streams = sessions.map((s) => concat(drain(asSaving(s)).chunks));
    await new DeviceGroup(devices).setState("STOP");
    const { devices: targets } = observedGroup([{ id: "a" }, { id: "b" }]);
    const resuming = await new DeviceGroup(targets).setState("RESUMING");
    resuming.forEach((s, i) => asResuming(s).write(streams[i]!));
    await new DeviceGroup(targets).setState("RUNNING");
    targets.forEach((t, i) => expect(t.model.digest()).toBe(devices[i]!.model.digest()));
  });
});

describe("refusals and rollback", () => {
  it.each(["BOGUS", "ERROR", 0xabcd] as const)("an impossible target (%s) moves no device", async (target) => {
    const { devices, events } = observedGroup([{ id: "a" }, { id: "b" }]);
    await expectCode(() => new DeviceGroup(devices).setState(target as unknown as MigrationState), "EINVAL");
    expect(devices.map((d) => d.state)).toEqual(["RUNNING", "RUNNING"]);
    expect(events.filter((e) => e.what === "quiesce")).toEqual([]);
  });

  it("a target one device does not support moves no device", async () => {
    const { devices, events } = observedGroup([{ id: "a" }, { id: "b", features: { p2p: true, precopy: false } }]);
    await expectCode(() => new DeviceGroup(devices).setState("PRE_COPY_P2P"), "EINVAL");
    expect(devices.map((d) => d.state)).toEqual(["RUNNING", "RUNNING"]);
    expect(events.filter((e) => e.what === "quiesce")).toEqual([]);
  });

  it("one device's quiesce timing out rolls the others back to where they were", async () => {
    const { devices, events } = observedGroup([
      { id: "a" },
      { id: "b" },
      { id: "c", quiesceTimeoutMs: 25, quiesce: () => new Promise<void>(() => undefined) },
      { id: "d" },
    ]);
    const group = new DeviceGroup(devices);
    const error = await expectCode(() => group.setState("STOP_COPY"), "ETIMEDOUT");
    expect(error.state).toBe("RUNNING");
    expect(devices.map((d) => d.state)).toEqual(["RUNNING", "RUNNING", "RUNNING", "RUNNING"]);
    // Nobody stopped, nobody saved, and d was never asked to quiesce.
    expect(events.some((e) => Object.values(e.all).some((s) => !RUNNING.has(s)))).toBe(false);
    expect(events.filter((e) => e.what === "saveConfig")).toEqual([]);
    expect(events.filter((e) => e.what === "quiesce").map((e) => e.device)).toEqual(["a", "b", "c"]);
    // All devices still run their workloads.
    for (const d of devices) d.write("bar", 0, new Uint8Array([1]));
  });

  it("rollback returns pre-copy devices to PRE_COPY with their sessions open", async () => {
    const { devices } = observedGroup([{ id: "a" }, { id: "b", quiesceTimeoutMs: 25, quiesce: () => new Promise<void>(() => undefined) }]);
    const group = new DeviceGroup(devices);
    const sessions = await group.setState("PRE_COPY");
    await expectCode(() => group.setState("STOP"), "ETIMEDOUT");
    expect(devices.map((d) => d.state)).toEqual(["PRE_COPY", "PRE_COPY"]);
    devices.forEach((d, i) => {
      expect(d.session).toBe(sessions[i]);
      expect((sessions[i] as SavingSession).closed).toBe(false);
    });
  });
});
