// End to end: a running device dirtied by a concurrent workload is migrated out (pre-copy when
// it has PRE_COPY, then stop-copy) and resumed into a second device; both sides' state must be
// byte-equal (digest and snapshot), for every tracking mode and feature set. Damaged streams
// (bit flips, truncation, trailing bytes, another device) leave the target's previous content
// intact and the target in ERROR until reset.
import { describe, expect, it } from "vitest";
import { createEncoder } from "../../src/codec/encoder.js";
import { MigrationError } from "../../src/core/errors.js";
import { migrateIn, migrateOut, type MigrationReport } from "../../src/migration/precopy.js";
import { MigrationDevice } from "../../src/migration/v2/migration-device.js";
import {
  concat,
  expectCode,
  expectSameBytes,
  FEATURE_SETS,
  fillRandom,
  fillWith,
  makeDevice,
  PAGE,
  REGIONS,
  resegment,
  rng,
  startWorkload,
  TRACKINGS,
} from "./helpers.js";

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface Migrated {
  stream: Uint8Array;
  chunks: Uint8Array[];
  report: MigrationReport;
  writes: number;
}

/** Migrates `source` out while a workload writes into it; the workload ends when the device stops. */
async function migrateWithWorkload(source: MigrationDevice, seed: number, options: { thresholdBytes?: number; maxRounds?: number } = {}): Promise<Migrated> {
  const workload = startWorkload(source, { seed, writesPerTick: 6 });
  const chunks: Uint8Array[] = [];
  const report = await migrateOut(source, {
    // A link that takes a moment per chunk, so the workload gets to run during pre-copy.
    send: async (chunk) => {
      chunks.push(chunk);
      await sleep(1);
    },
    thresholdBytes: options.thresholdBytes ?? 2 * PAGE,
    maxRounds: options.maxRounds ?? 8,
    minProgress: 0,
  });
  expect(source.state).toBe("STOP");
  const ended = await workload.stopped;
  // The workload stopped because the device did: its write was refused.
  expect(ended.error).toBeInstanceOf(MigrationError);
  expect((ended.error as MigrationError).code).toBe("EINVAL");
  const stream = concat(chunks);
  expect(report.bytes).toBe(stream.length);
  return { stream, chunks, report, writes: ended.writes };
}

describe.each(TRACKINGS)("live migration, %s tracking", (tracking) => {
  it.each(FEATURE_SETS)("$name: source and target end byte-equal", async ({ features }) => {
    const config = new TextEncoder().encode(`config for ${tracking}`);
    const source = makeDevice({ tracking, features, deviceId: "vgpu:1", callbacks: { saveConfig: () => config } });
    fillRandom(source, 100);
    const { stream, report, writes } = await migrateWithWorkload(source, 101);
    if (features.precopy) {
      expect(["threshold", "max-rounds", "no-progress"]).toContain(report.converged);
      expect(writes).toBeGreaterThan(0);
    } else {
      expect(report.converged).toBe("no-precopy");
      expect(report.rounds).toEqual([]);
    }
    const sourceDigest = source.model.digest();

    let loaded: Uint8Array | undefined;
    const target = makeDevice({ tracking, features, deviceId: "vgpu:1", callbacks: { loadConfig: (c) => void (loaded = c.slice()) } });
    fillWith(target, 0xa5);
    // Re-cut: segmentation is not part of the protocol.
    const { bytes } = await migrateIn(target, resegment(stream, rng(102), 3000));
    expect(bytes).toBe(stream.length);
    expect(target.state).toBe("RUNNING");
    expect(target.model.digest()).toBe(sourceDigest);
    expectSameBytes(target.model.snapshot(), source.model.snapshot(), "device state");
    expect(loaded).toEqual(config);
    // The target runs: its own workload may write, and it can migrate on again.
    target.write("bar0", 0, new Uint8Array([1, 2, 3]));
    source.free();
    target.free();
  });
});

describe("live migration, larger and odd layouts", () => {
  it.each(TRACKINGS)("%s: a 2 MiB device over several windows, with pre-copy rounds", async (tracking) => {
    const regions = [
      { name: "vram", size: (2 << 20) - 3 * 1024 - 7 },
      { name: "regs", size: 300 },
    ];
    const source = new MigrationDevice({ regions, tracking, features: { p2p: true, precopy: true } });
    fillRandom(source, 110);
    const { stream, report } = await migrateWithWorkload(source, 111, { thresholdBytes: 0, maxRounds: 4 });
    expect(report.rounds.length).toBeGreaterThan(0);
    const target = new MigrationDevice({ regions, tracking });
    await migrateIn(target, [stream]);
    expect(target.model.digest()).toBe(source.model.digest());
    expectSameBytes(target.model.snapshot(), source.model.snapshot());
    source.free();
    target.free();
  });

  it.each(TRACKINGS)("%s: 1 KiB pages, an empty region and a one-byte region", async (tracking) => {
    const regions = [
      { name: "empty", size: 0 },
      { name: "one", size: 1 },
      { name: "mmio", size: 7 * 1024 + 1 },
      { name: "ram", size: 96 * 1024 },
    ];
    const source = new MigrationDevice({ regions, tracking, pageSize: 1024 });
    fillRandom(source, 120);
    const { stream } = await migrateWithWorkload(source, 121);
    const target = new MigrationDevice({ regions, tracking, pageSize: 1024 });
    fillWith(target, 0x3c);
    await migrateIn(target, resegment(stream, rng(122), 97));
    expect(target.model.digest()).toBe(source.model.digest());
    expectSameBytes(target.model.snapshot(), source.model.snapshot());
    source.free();
    target.free();
  });

  it("a device that starts zero-filled (zero-page records) resumes into a filled target, ending in STOP", async () => {
    const source = makeDevice();
    const { stream } = await migrateWithWorkload(source, 130, {});
    const target = makeDevice();
    fillWith(target, 0xff);
    await migrateIn(target, [stream], "STOP");
    expect(target.state).toBe("STOP");
    expect(target.model.digest()).toBe(source.model.digest());
    source.free();
    target.free();
  });
});

describe("damaged streams leave the target intact and in ERROR", () => {
  let cached: { stream: Uint8Array; digest: bigint } | undefined;
  async function goodStream(): Promise<{ stream: Uint8Array; digest: bigint }> {
    if (cached) return cached;
    const source = makeDevice({ deviceId: "nic", callbacks: { saveConfig: () => new Uint8Array([4, 5, 6]) } });
    fillRandom(source, 140);
    const { stream } = await migrateWithWorkload(source, 141);
    cached = { stream, digest: source.model.digest() };
    source.free();
    return cached;
  }

  /** Feeds `stream` to a prefilled target; expects failure with one of `codes`, ERROR, untouched. */
  async function expectRejected(stream: Uint8Array, codes: readonly string[], options: { deviceId?: string } = {}): Promise<MigrationError> {
    const target = makeDevice({ deviceId: options.deviceId ?? "nic", callbacks: { loadConfig: () => undefined } });
    fillWith(target, 0x5a);
    target.write("ram", 0, new TextEncoder().encode("previous content"));
    const before = target.model.snapshot();
    const digest = target.model.digest();
    let caught: unknown;
    try {
      await migrateIn(target, resegment(stream, rng(stream.length), 4000));
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(MigrationError);
    const error = caught as MigrationError;
    expect(codes, error.message).toContain(error.code);
    expect(target.state).toBe("ERROR");
    expect(target.model.digest()).toBe(digest);
    expectSameBytes(target.model.snapshot(), before, "target content after a rejected stream");
    target.reset();
    expect(target.state).toBe("RUNNING");
    expect(target.model.digest()).toBe(digest);
    // And the same device then accepts a good stream (one made for it).
    if (options.deviceId === undefined) {
      const good = await goodStream();
      await migrateIn(target, [good.stream]);
      expect(target.model.digest()).toBe(good.digest);
    }
    target.free();
    return error;
  }

  it("a good stream is accepted (control)", async () => {
    const { stream, digest } = await goodStream();
    const target = makeDevice({ deviceId: "nic", callbacks: { loadConfig: () => undefined } });
    await migrateIn(target, [stream]);
    expect(target.model.digest()).toBe(digest);
    target.free();
  });

  it.each([0.5, 0.25, 0.75, 0.999])("a bit flip at %f of the stream", async (where) => {
    const { stream } = await goodStream();
    const damaged = stream.slice();
    const at = Math.floor(stream.length * where);
    damaged[at]! ^= 0x10;
    const error = await expectRejected(damaged, ["EBADMSG"]);
    expect(error.byteOffset).toBeTypeOf("number");
  });

  it("a bit flip in the header", async () => {
    const { stream } = await goodStream();
    for (const at of [0, 9, 20, 30, 50]) {
      const damaged = stream.slice();
      damaged[at]! ^= 0x01;
      await expectRejected(damaged, ["EBADMSG", "EPROTONOSUPPORT", "E2BIG"]);
    }
  });

  it("random bit flips anywhere are all detected", async () => {
    const { stream } = await goodStream();
    const random = rng(150);
    for (let i = 0; i < 12; i++) {
      const damaged = stream.slice();
      damaged[Math.floor(random() * stream.length)]! ^= 1 << Math.floor(random() * 8);
      await expectRejected(damaged, ["EBADMSG", "ENODATA", "EPROTONOSUPPORT", "E2BIG"]);
    }
  });

  it.each([
    ["empty", () => 0],
    ["inside the header", () => 20],
    ["in the middle", (n: number) => n >> 1],
    ["without the end record", (n: number) => n - 56],
    ["one byte short", (n: number) => n - 1],
  ] as const)("a stream truncated %s", async (_name, cut) => {
    const { stream } = await goodStream();
    const error = await expectRejected(stream.subarray(0, cut(stream.length)), ["ENODATA"]);
    expect(error.state).toBe("ERROR");
  });

  it("trailing bytes after the end record", async () => {
    const { stream } = await goodStream();
    await expectRejected(concat([stream, new Uint8Array([0])]), ["EBADMSG"]);
  });

  it("a stream for another device", async () => {
    const { stream } = await goodStream();
    await expectRejected(stream, ["ENODEV"], { deviceId: "other" });
  });

  it("a stream with another region layout", async () => {
    const source = new MigrationDevice({ regions: [{ name: "ram", size: 8 * PAGE }], deviceId: "nic" });
    const { stream } = await migrateWithWorkload(source, 160);
    await expectRejected(stream, ["ENODEV"]);
    source.free();
  });

  it("a stream without the config the target requires", async () => {
    const source = makeDevice({ deviceId: "nic" });
    fillRandom(source, 170);
    const { stream } = await migrateWithWorkload(source, 171);
    await expectRejected(stream, ["EBADMSG"]);
    source.free();
  });
});

describe("incremental resume", () => {
  it.each(TRACKINGS)("%s: a target holding an older version receives only what changed", async (tracking) => {
    const source = makeDevice({ tracking });
    fillRandom(source, 180);
    const first = await migrateWithWorkload(source, 181);
    const target = makeDevice({ tracking });
    await migrateIn(target, [first.stream]);
    const base = REGIONS.map((r) => target.model.view(r.name).slice());
    const baseDigest = target.model.digest();

    // The source resumes and changes a few pages; an incremental stream against the old version.
    source.reset();
    source.write("bar0", 2 * PAGE, new Uint8Array(100).fill(9));
    source.write("ram", 40 * PAGE, new Uint8Array(123).fill(8)); // the partial last page
    await source.setState("STOP");
    const chunks: Uint8Array[] = [];
    const encoder = createEncoder({ regions: source.model.layout, baseDigest, ondata: (c) => chunks.push(c) });
    REGIONS.forEach((r, i) => encoder.writePages(i, 0, source.model.view(r.name), { shadow: base[i]!.slice() }));
    encoder.end();
    const stream = concat(chunks);
    expect(stream.length).toBeLessThan(first.stream.length / 4);

    await migrateIn(target, [stream]);
    expect(target.model.digest()).toBe(source.model.digest());
    expectSameBytes(target.model.snapshot(), source.model.snapshot());

    // Onto any other base it is refused (ESTALE), and the target keeps what it had.
    const other = makeDevice({ tracking });
    fillWith(other, 1);
    const otherDigest = other.model.digest();
    await expectCode(() => migrateIn(other, [stream]), "ESTALE");
    expect(other.state).toBe("ERROR");
    expect(other.model.digest()).toBe(otherDigest);
    source.free();
    target.free();
    other.free();
  });
});
