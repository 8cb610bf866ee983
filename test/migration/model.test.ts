// Model-based test of the v2 migration device: random sequences of workload writes, setState to
// any target (valid or not), session reads and writes, PRE_COPY info queries and resets, on
// devices with random feature sets and tracking modes, run against a small model. The model
// predicts each transition with the kernel's next-state rule (migrationPath) and tracks the
// content the device must hold. Invariants checked after every command: the state is a valid
// one the features support (or ERROR), a session exists exactly in the saving / resuming states,
// writes succeed exactly while running, and the content is the model's.
import { fc } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import { createEncoder } from "../../src/codec/encoder.js";
import { MigrationError } from "../../src/core/errors.js";
import type { DirtyTracking } from "../../src/device/device-model.js";
import { ResumingSession } from "../../src/migration/resuming-session.js";
import { SavingSession } from "../../src/migration/saving-session.js";
import { MigrationDevice } from "../../src/migration/v2/migration-device.js";
import { isSavingState, MIGRATION_STATES, migrationPath, stateSupported, type MigrationFeatures, type MigrationState } from "../../src/migration/v2/states.js";
import { concat, TRACKINGS } from "./helpers.js";

const PAGE_SIZE = 1024;
const LAYOUT = [
  { name: "a", size: 3 * PAGE_SIZE + 100 },
  { name: "b", size: 512 },
];
const RUNNING = new Set<MigrationState>(["RUNNING", "RUNNING_P2P", "PRE_COPY", "PRE_COPY_P2P"]);

type ResumeStatus = "none" | "complete" | "incomplete" | "corrupt";

interface Model {
  features: Required<MigrationFeatures>;
  state: MigrationState;
  /** What the device holds, regions in order. */
  content: Uint8Array[];
  /** What the open resuming session received so far. */
  resume: ResumeStatus;
  /** The content a complete resume installs. */
  resumeContent: Uint8Array[] | undefined;
}

interface Real {
  device: MigrationDevice;
  /** The saving session being read and the bytes read from it. */
  saving: SavingSession | undefined;
  read: Uint8Array[];
  /** Complete streams read out of the device, with the content they carry. */
  streams: { bytes: Uint8Array; content: Uint8Array[] }[];
  /** Every session ever opened (closed ones must refuse use). */
  sessions: (SavingSession | ResumingSession)[];
}

function code(error: unknown): string | undefined {
  return error instanceof MigrationError ? error.code : undefined;
}

function invariants(m: Model, r: Real): void {
  const d = r.device;
  expect(d.state).toBe(m.state);
  expect(d.state === "ERROR" || stateSupported(d.state, m.features)).toBe(true);
  expect(d.running).toBe(RUNNING.has(d.state));
  if (isSavingState(d.state)) expect(d.session).toBeInstanceOf(SavingSession);
  else if (d.state === "RESUMING") expect(d.session).toBeInstanceOf(ResumingSession);
  else expect(d.session).toBeUndefined();
  for (const s of r.sessions) expect(s.closed).toBe(s !== d.session);
  LAYOUT.forEach((region, i) => {
    const actual = d.model.view(region.name);
    const expected = m.content[i]!;
    if (!Buffer.from(actual.buffer, actual.byteOffset, actual.length).equals(expected)) {
      expect.fail(`region ${region.name} differs from the model`);
    }
  });
}

/** Keeps track of the sessions the device opens. */
function observe(r: Real): void {
  const s = r.device.session;
  if (s && !r.sessions.includes(s)) r.sessions.push(s);
  if (s instanceof SavingSession && s !== r.saving) {
    r.saving = s;
    r.read = [];
  }
}

class WriteCommand implements fc.AsyncCommand<Model, Real> {
  constructor(
    readonly region: number,
    readonly at: number,
    readonly bytes: Uint8Array,
  ) {}
  check(): boolean {
    return true;
  }
  async run(m: Model, r: Real): Promise<void> {
    const size = LAYOUT[this.region]!.size;
    const offset = Math.min(this.at, size - this.bytes.length);
    let error: unknown;
    try {
      r.device.write(LAYOUT[this.region]!.name, offset, this.bytes);
    } catch (e) {
      error = e;
    }
    if (RUNNING.has(m.state)) {
      expect(error).toBeUndefined();
      m.content[this.region]!.set(this.bytes, offset);
    } else {
      expect(code(error)).toBe("EINVAL");
    }
    invariants(m, r);
  }
  toString(): string {
    return `write(${this.region}, ${this.at}, ${this.bytes.length})`;
  }
}

class SetStateCommand implements fc.AsyncCommand<Model, Real> {
  constructor(readonly target: MigrationState) {}
  check(): boolean {
    return true;
  }
  async run(m: Model, r: Real): Promise<void> {
    let returned: unknown;
    let error: unknown;
    try {
      returned = await r.device.setState(this.target);
    } catch (e) {
      error = e;
    }
    observe(r);
    if (this.target === m.state) {
      // A request for the current state is a no-op (as drivers loop while cur != new).
      expect(error).toBeUndefined();
      expect(returned).toBeUndefined();
      invariants(m, r);
      return;
    }
    let path: MigrationState[];
    try {
      path = migrationPath(m.state, this.target, m.features);
    } catch {
      expect(code(error), `refused ${m.state} -> ${String(this.target)}`).toBe("EINVAL");
      expect((error as MigrationError).state).toBe(m.state);
      invariants(m, r);
      return;
    }
    let opened: "saving" | "resuming" | undefined;
    for (const step of path) {
      if (m.state === "RESUMING") {
        // Leaving RESUMING validates what was written.
        if (m.resume !== "complete") {
          expect(code(error), `leaving RESUMING after a ${m.resume} stream`).toMatch(/^(ENODATA|EBADMSG)$/);
          expect((error as MigrationError).state).toBe("ERROR");
          m.state = "ERROR";
          m.resume = "none";
          invariants(m, r);
          return;
        }
        m.content = m.resumeContent!.map((c) => c.slice());
        m.resume = "none";
      }
      if (step === "RESUMING") {
        opened = "resuming";
        m.resume = "none";
      } else if (isSavingState(step) && !isSavingState(m.state)) {
        opened = "saving";
      }
      m.state = step;
    }
    expect(error).toBeUndefined();
    if (opened === "saving") expect(returned).toBeInstanceOf(SavingSession);
    else if (opened === "resuming") expect(returned).toBeInstanceOf(ResumingSession);
    else expect(returned).toBeUndefined();
    invariants(m, r);
  }
  toString(): string {
    return `setState(${String(this.target)})`;
  }
}

class ReadCommand implements fc.AsyncCommand<Model, Real> {
  constructor(readonly max: number) {}
  check(): boolean {
    return true;
  }
  async run(m: Model, r: Real): Promise<void> {
    // Closed sessions refuse to be read.
    for (const s of r.sessions) if (s instanceof SavingSession && s.closed) expect(() => s.read()).toThrow(/closed/);
    const session = r.device.session;
    if (!isSavingState(m.state)) {
      expect(session instanceof SavingSession).toBe(false);
      invariants(m, r);
      return;
    }
    const saving = session as SavingSession;
    // The invariant: PRE_COPY info is 0/0 exactly when read() would throw ENOMSG.
    const info = m.state === "PRE_COPY" || m.state === "PRE_COPY_P2P" ? r.device.precopyInfo() : undefined;
    let chunk: Uint8Array | null | undefined;
    let error: unknown;
    try {
      chunk = saving.read(this.max);
    } catch (e) {
      error = e;
    }
    if (info) expect(info.initialBytes === 0 && info.dirtyBytes === 0, `info ${JSON.stringify(info)}`).toBe(code(error) === "ENOMSG");
    if (error !== undefined) {
      // Only pre-copy may have nothing for now.
      expect(code(error)).toBe("ENOMSG");
      expect(m.state).not.toBe("STOP_COPY");
      expect(r.device.precopyInfo()).toEqual({ initialBytes: 0, dirtyBytes: 0 });
    } else if (chunk === null) {
      expect(m.state).toBe("STOP_COPY");
      if (r.read.length > 0) {
        r.streams.push({ bytes: concat(r.read), content: m.content.map((c) => c.slice()) });
        r.read = [];
      }
    } else {
      expect(chunk!.length).toBeGreaterThan(0);
      expect(chunk!.length).toBeLessThanOrEqual(this.max);
      r.read.push(chunk!.slice());
    }
    invariants(m, r);
  }
  toString(): string {
    return `read(${this.max})`;
  }
}

/** Reads the whole stream out in STOP_COPY (so that resumes have full streams to use). */
class DrainCommand implements fc.AsyncCommand<Model, Real> {
  check(m: Readonly<Model>): boolean {
    return m.state === "STOP_COPY";
  }
  async run(m: Model, r: Real): Promise<void> {
    const saving = r.device.session as SavingSession;
    for (let chunk = saving.read(); chunk !== null; chunk = saving.read()) r.read.push(chunk.slice());
    if (r.read.length > 0) {
      r.streams.push({ bytes: concat(r.read), content: m.content.map((c) => c.slice()) });
      r.read = [];
    }
    expect(saving.read()).toBeNull();
    invariants(m, r);
  }
  toString(): string {
    return "drain";
  }
}

function encodeFull(content: Uint8Array[]): Uint8Array {
  const chunks: Uint8Array[] = [];
  const encoder = createEncoder({ regions: LAYOUT, pageSize: PAGE_SIZE, ondata: (c) => chunks.push(c) });
  content.forEach((c, i) => encoder.writePages(i, 0, c));
  encoder.end();
  return concat(chunks);
}

class ResumeWriteCommand implements fc.AsyncCommand<Model, Real> {
  constructor(
    readonly kind: "device-stream" | "encoded" | "truncated" | "corrupt",
    readonly seed: number,
  ) {}
  check(): boolean {
    return true;
  }
  async run(m: Model, r: Real): Promise<void> {
    for (const s of r.sessions) if (s instanceof ResumingSession && s.closed) expect(() => s.write(new Uint8Array(1))).toThrow(/closed/);
    const session = r.device.session;
    if (m.state !== "RESUMING") {
      expect(session instanceof ResumingSession).toBe(false);
      invariants(m, r);
      return;
    }
    let stream: Uint8Array;
    let content: Uint8Array[];
    const fromDevice = r.streams.length > 0 ? r.streams[this.seed % r.streams.length] : undefined;
    if (this.kind === "device-stream" && fromDevice) {
      stream = fromDevice.bytes;
      content = fromDevice.content;
    } else {
      content = LAYOUT.map((l, i) => new Uint8Array(l.size).map((_, j) => (j * 31 + i * 7 + this.seed) & 0xff));
      stream = encodeFull(content);
    }
    let status: ResumeStatus = "complete";
    if (this.kind === "truncated") {
      stream = stream.subarray(0, this.seed % stream.length);
      status = "incomplete";
    } else if (this.kind === "corrupt") {
      stream = stream.slice();
      stream[this.seed % stream.length]! ^= 0x40;
      status = "corrupt";
    }
    // A second stream after anything already written is not a valid stream.
    const next: ResumeStatus = m.resume === "none" ? status : stream.length === 0 ? m.resume : "corrupt";
    let error: unknown;
    try {
      // In random pieces: segmentation is not part of the protocol.
      for (let at = 0, n = 1; at < stream.length; at += n, n = 1 + ((n * 7 + this.seed) % 900)) {
        (session as ResumingSession).write(stream.subarray(at, at + n));
      }
    } catch (e) {
      error = e;
    }
    if (next === "complete" || (next === "incomplete" && m.resume === "none")) expect(error).toBeUndefined();
    else if (error !== undefined) expect(code(error)).toMatch(/^(EBADMSG|ENODATA|E2BIG|EPROTONOSUPPORT)$/);
    m.resume = next;
    m.resumeContent = next === "complete" ? content.map((c) => c.slice()) : undefined;
    invariants(m, r);
  }
  toString(): string {
    return `resumeWrite(${this.kind}, ${this.seed})`;
  }
}

class PrecopyInfoCommand implements fc.AsyncCommand<Model, Real> {
  check(): boolean {
    return true;
  }
  async run(m: Model, r: Real): Promise<void> {
    let error: unknown;
    let info: { initialBytes: number; dirtyBytes: number } | undefined;
    try {
      info = r.device.precopyInfo();
    } catch (e) {
      error = e;
    }
    if (m.state === "PRE_COPY" || m.state === "PRE_COPY_P2P") {
      expect(error).toBeUndefined();
      expect(info!.initialBytes).toBeGreaterThanOrEqual(0);
      expect(info!.dirtyBytes).toBeGreaterThanOrEqual(0);
    } else {
      expect(code(error)).toBe("EINVAL");
    }
    invariants(m, r);
  }
  toString(): string {
    return "precopyInfo";
  }
}

class ResetCommand implements fc.AsyncCommand<Model, Real> {
  check(): boolean {
    return true;
  }
  async run(m: Model, r: Real): Promise<void> {
    r.device.reset();
    m.state = "RUNNING";
    m.resume = "none";
    m.resumeContent = undefined;
    invariants(m, r);
  }
  toString(): string {
    return "reset";
  }
}

const targets = fc.constantFrom<MigrationState>(
  ...MIGRATION_STATES,
  // Invalid values from untyped callers.
  "BOGUS" as MigrationState,
  0xabcd as unknown as MigrationState,
);

const commandArbs = [
  fc
    .tuple(fc.nat(LAYOUT.length - 1), fc.nat(4000), fc.uint8Array({ minLength: 1, maxLength: 300 }))
    .map(([region, at, bytes]) => new WriteCommand(region, at, bytes)),
  // Migration-relevant targets more often than invalid ones.
  targets.map((t) => new SetStateCommand(t)),
  fc.constantFrom<MigrationState>("PRE_COPY", "STOP_COPY", "RESUMING", "RUNNING", "STOP").map((t) => new SetStateCommand(t)),
  fc.integer({ min: 1, max: 6000 }).map((n) => new ReadCommand(n)),
  fc.constant(new DrainCommand()),
  fc
    .tuple(fc.constantFrom("device-stream", "device-stream", "encoded", "truncated", "corrupt" as const), fc.nat(100000))
    .map(([k, s]) => new ResumeWriteCommand(k, s)),
  fc.constant(new PrecopyInfoCommand()),
  fc.constant(new ResetCommand()),
];

describe("PRE_COPY info against read() over random workloads", () => {
  // Regions of several 1 MiB windows, so that passes span windows and the encoder holds records
  // open between reads: "precopy info is 0/0 exactly when read() would throw ENOMSG".
  it("info is 0/0 exactly when read() throws ENOMSG, in every tracking mode and feature set with PRE_COPY", async () => {
    const step = fc.oneof(
      fc.record({ kind: fc.constant("write" as const), page: fc.nat(599), pages: fc.integer({ min: 1, max: 300 }), value: fc.nat(255) }),
      fc.record({ kind: fc.constant("read" as const), max: fc.constantFrom(1, 100, 5000, 1 << 20, 3 << 20) }),
    );
    await fc.assert(
      fc.asyncProperty(fc.boolean(), fc.constantFrom<DirtyTracking>(...TRACKINGS), fc.array(step, { maxLength: 40 }), async (p2p, tracking, steps) => {
        const pageSize = 4096;
        const device = new MigrationDevice({
          regions: [
            { name: "r", size: 600 * pageSize },
            { name: "s", size: 3000 },
          ],
          pageSize,
          tracking,
          features: { p2p, precopy: true },
        });
        try {
          const session = (await device.setState(p2p ? "PRE_COPY_P2P" : "PRE_COPY")) as SavingSession;
          for (const st of steps) {
            if (st.kind === "write") {
              const pages = Math.min(st.pages, 600 - st.page);
              device.write("r", st.page * pageSize, new Uint8Array(pages * pageSize).fill(st.value));
              continue;
            }
            const info = session.precopyInfo();
            let enomsg = false;
            try {
              session.read(st.max);
            } catch (e) {
              expect(code(e)).toBe("ENOMSG");
              enomsg = true;
            }
            expect(info.initialBytes === 0 && info.dirtyBytes === 0, `info ${JSON.stringify(info)}`).toBe(enomsg);
          }
        } finally {
          device.free();
        }
      }),
      { numRuns: 60 },
    );
  });
});

describe("v2 migration device against a model", () => {
  it("random command sequences keep the device and the model in step", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.record({ p2p: fc.boolean(), precopy: fc.boolean() }),
        fc.constantFrom<DirtyTracking>(...TRACKINGS),
        fc.commands(commandArbs, { maxCommands: 60, size: "large" }),
        async (features, tracking, cmds) => {
          const device = new MigrationDevice({ regions: LAYOUT, pageSize: PAGE_SIZE, tracking, features });
          try {
            const setup = (): { model: Model; real: Real } => ({
              model: {
                features,
                state: "RUNNING",
                content: LAYOUT.map((l) => new Uint8Array(l.size)),
                resume: "none",
                resumeContent: undefined,
              },
              real: { device, saving: undefined, read: [], streams: [], sessions: [] },
            });
            await fc.asyncModelRun(setup, cmds);
          } finally {
            device.free();
          }
        },
      ),
      { numRuns: 400 },
    );
  });
});
