// Hostile streams cost what they deliver (issue: memory and work follow the data, not the
// header's claims). Memory is measured in child processes (the peak RSS of a fresh Node), so
// that these tests can fail; they run against dist/ like the CLI tests (npm run build first).
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { afterAll, describe, expect, test } from "vitest";
import { createDecoder, decodeSnapshot, encodeSnapshot } from "../../src/codec/snapshot.js";
import { decodeToFile } from "../../src/node/files.js";
import { ROOT } from "../cli/helpers.js";
import { StreamBuilder } from "./stream-builder.js";

const GiB = 2 ** 30;
const PAGE = 4096;
const PAGES = GiB / PAGE;
const DEVICE = "hostile";
const spec = { regions: [{ name: "state", size: GiB }], pageSize: PAGE, maxRecordPayload: 65536, deviceId: DEVICE };

/** A header claiming 1 GiB, and nothing after it. */
function headerOnly(): Uint8Array {
  return new StreamBuilder(spec).bytes();
}

/** One ZERO record over the whole 1 GiB, no END (about 100 bytes). */
function oneZero(): Uint8Array {
  return new StreamBuilder(spec).zero(0, 0, PAGES).bytes();
}

/** A valid stream of `count` ZERO records, each over the whole 1 GiB state. */
function repeatedZeros(count: number): Uint8Array {
  const b = new StreamBuilder(spec);
  for (let i = 0; i < count; i++) b.zero(0, 0, PAGES);
  return b.end().bytes();
}

const dir = mkdtempSync(join(tmpdir(), "migstream-hostile-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface ChildResult {
  code: string;
  maxRssMiB: number;
  ms: number;
}

// Runs one decode path over the stream in a fresh Node process; reports the error code (or
// "ok"), the process's peak RSS and the time the decode took.
const CHILD = `
import { readFileSync } from "node:fs";
const m = await import(process.argv[1]);
const [, , mode, path, deviceId] = process.argv;
const stream = new Uint8Array(readFileSync(path));
const started = performance.now();
let code = "ok";
try {
  if (mode === "snapshot") m.decodeSnapshot(stream);
  else if (mode === "push") {
    const d = m.createDecoder();
    for (let at = 0; at < stream.length; at += 7) d.push(stream.subarray(at, at + 7));
    d.end();
  } else if (mode === "receive") {
    // The library's receiving end over loopback: the device is built from the header's claim.
    const node = await import(new URL("./node/index.js", process.argv[1]).href);
    const { connect } = await import("node:net");
    let ready;
    const bound = new Promise((resolve) => (ready = resolve));
    const receiving = node.receiveDevice({ port: 0, host: "127.0.0.1", final: "STOP", timeoutMs: 20000, onListening: (a) => ready(a.port) });
    receiving.catch(() => undefined);
    const port = await bound;
    await new Promise((resolve, reject) => {
      const socket = connect(port, "127.0.0.1", () => socket.end(stream, resolve));
      socket.on("error", reject);
    });
    await receiving;
  } else if (mode === "migrate") {
    const device = new m.MigrationDevice({ regions: [{ name: "state", size: 2 ** 30 }], deviceId });
    await m.migrateIn(device, [stream], "STOP");
  }
} catch (error) {
  code = error.code ?? String(error);
}
const ms = performance.now() - started;
// VmHWM, not getrusage: a child's maxRSS carries its parent's peak over fork and exec.
const hwm = /^VmHWM:\\s+(\\d+) kB$/m.exec(readFileSync("/proc/self/status", "utf8"));
const maxRssMiB = hwm ? Number(hwm[1]) / 1024 : process.resourceUsage().maxRSS / 1024;
console.log(JSON.stringify({ code, maxRssMiB, ms }));
`;

function inChild(mode: "snapshot" | "push" | "migrate" | "receive", stream: Uint8Array, name: string): ChildResult {
  const path = join(dir, name);
  writeFileSync(path, stream);
  const entry = pathToFileURL(join(ROOT, "dist", "index.js")).href;
  const out = execFileSync(process.execPath, ["--input-type=module", "-e", CHILD, entry, mode, path, DEVICE], { encoding: "utf8", timeout: 60_000 });
  return JSON.parse(out.trim().split("\n").pop()!) as ChildResult;
}

const LIMIT_MIB = 128;

describe("memory follows the pages delivered, not the header's claim", () => {
  for (const mode of ["snapshot", "push", "migrate"] as const) {
    test(`${mode}: a header-only stream claiming 1 GiB stays under ${LIMIT_MIB} MiB`, () => {
      const r = inChild(mode, headerOnly(), `header-only-${mode}`);
      console.log(`${mode} header-only 1 GiB: peak RSS ${r.maxRssMiB.toFixed(0)} MiB`);
      expect(r.code).toBe("ENODATA");
      expect(r.maxRssMiB).toBeLessThan(LIMIT_MIB);
    });

    test(`${mode}: one ZERO record over 1 GiB without END stays under ${LIMIT_MIB} MiB`, () => {
      const stream = oneZero();
      expect(stream.length).toBeLessThan(128);
      const r = inChild(mode, stream, `one-zero-${mode}`);
      console.log(`${mode} one ZERO over 1 GiB: peak RSS ${r.maxRssMiB.toFixed(0)} MiB`);
      expect(r.code).toBe("ENODATA");
      expect(r.maxRssMiB).toBeLessThan(LIMIT_MIB);
    });
  }

  test(`receiveDevice (migstream/node): a header-only stream claiming 1 GiB stays under ${LIMIT_MIB} MiB`, () => {
    const r = inChild("receive", headerOnly(), "header-only-receive");
    console.log(`receiveDevice header-only 1 GiB: peak RSS ${r.maxRssMiB.toFixed(0)} MiB`);
    expect(r.code).toBe("ENODATA");
    expect(r.maxRssMiB).toBeLessThan(LIMIT_MIB);
  });

  test("migrate: 300 ZERO records over 1 GiB are absorbed: quick, and no memory is touched", () => {
    const r = inChild("migrate", repeatedZeros(300), "zeros-migrate");
    console.log(`migrate 300 ZERO over 1 GiB: peak RSS ${r.maxRssMiB.toFixed(0)} MiB, ${r.ms.toFixed(0)} ms`);
    expect(r.code).toBe("ok");
    expect(r.maxRssMiB).toBeLessThan(LIMIT_MIB);
    // Generous: the machine running the tests may be loaded. Applying them would take minutes.
    expect(r.ms).toBeLessThan(10_000);
  });
});

describe("work follows the bytes received plus the state size", () => {
  test("300 ZERO records over a 1 GiB state: absorbed by the push decoder, no page applied", () => {
    const stream = repeatedZeros(300);
    expect(stream.length).toBeLessThan(10_000);
    const decoder = createDecoder();
    const started = performance.now();
    decoder.push(stream, true);
    expect(performance.now() - started).toBeLessThan(10_000);
    expect(decoder.done).toBe(true);
    const { pages, work } = decoder.summary();
    expect(pages.zero).toBe(300 * PAGES);
    expect(work.pagesApplied).toBe(0);
  });

  test("decode to a file writes no zeros at all for them (the file stays sparse)", async () => {
    const output = join(dir, "zeros.state");
    const started = performance.now();
    const summary = await decodeToFile([repeatedZeros(300)], output);
    expect(performance.now() - started).toBeLessThan(10_000);
    expect(summary.work.pagesApplied).toBe(0);
    const st = statSync(output);
    expect(st.size).toBe(GiB);
    // Allocated blocks: nothing written (a filesystem without sparse files would fail here).
    expect(st.blocks * 512).toBeLessThan(1024 * 1024);
  });

  test("verifying them (whole records, no target) gives the same verdict, counting them once", async () => {
    const started = performance.now();
    const summary = await decodeToFile([repeatedZeros(300)], undefined);
    expect(performance.now() - started).toBeLessThan(10_000);
    expect(summary.ended).toBe(true);
    expect(summary.records.zero).toBe(300);
    // Counted as for a target of unknown content: the first record's pages, then absorbed.
    expect(summary.work.pagesApplied).toBe(PAGES);
  });

  test("a ZERO record over pages written since is applied again, and counted", () => {
    const size = 64 * 1024;
    const s = { regions: [{ name: "state", size }], pageSize: PAGE, maxRecordPayload: 65536 };
    const b = new StreamBuilder(s).zero(0, 0, 16).zero(0, 0, 16).zero(0, 0, 16).pages(0, PAGE, new Uint8Array(PAGE).fill(7)).zero(0, 0, 16);
    b.pages(0, 0, new Uint8Array(PAGE).fill(9)).end();
    const decoder = createDecoder();
    const applied = (): number => decoder.summary().work.pagesApplied;
    decoder.push(b.header);
    decoder.push(b.records[0]!);
    // Staging that is fresh memory holds zeros already (0 applied); reused staging does not (16).
    const first = applied();
    expect([0, 16]).toContain(first);
    decoder.push(b.records[1]!);
    decoder.push(b.records[2]!);
    expect(applied()).toBe(first);
    decoder.push(b.records[3]!);
    expect(applied()).toBe(first + 1);
    decoder.push(b.records[4]!);
    expect(applied()).toBe(first + 2);
    for (const r of b.records.slice(5)) decoder.push(r);
    decoder.end();
    const out = decoder.result();
    expect(out[0]).toBe(9);
    expect(out.subarray(1, PAGE).every((x) => x === 9)).toBe(true);
    expect(out.subarray(PAGE).every((x) => x === 0)).toBe(true);
  });
});

describe("maxPagesApplied", () => {
  const size = 16 * PAGE;
  const s = { regions: [{ name: "state", size }], pageSize: PAGE, maxRecordPayload: 65536 };
  const page = new Uint8Array(PAGE).fill(1);
  /** `passes` passes over every page (raw), with a round marker after each when `rounds`. */
  function passes(count: number, rounds: boolean): Uint8Array {
    const b = new StreamBuilder(s);
    for (let p = 0; p < count; p++) {
      for (let i = 0; i < 16; i++) b.pages(0, i * PAGE, page);
      if (rounds) b.round(p, 16);
    }
    return b.end().bytes();
  }

  test("defaults to 3 state-sized passes plus one per round marker", () => {
    expect(decodeSnapshot(passes(3, false))).toEqual(new Uint8Array(size).fill(1));
    expect(() => decodeSnapshot(passes(4, false))).toThrow(expect.objectContaining({ code: "E2BIG", recordIndex: 48 }));
    expect(decodeSnapshot(passes(8, true))).toEqual(new Uint8Array(size).fill(1));
  });

  test("an explicit limit is fixed, rounds or not", () => {
    expect(() => decodeSnapshot(passes(2, true), { maxPagesApplied: 20 })).toThrow(expect.objectContaining({ code: "E2BIG", recordIndex: 21 }));
    expect(decodeSnapshot(passes(2, true), { maxPagesApplied: 32 })).toEqual(new Uint8Array(size).fill(1));
    expect(() => createDecoder({ maxPagesApplied: -1 })).toThrow(expect.objectContaining({ code: "EINVAL" }));
  });

  test("streams the encoder writes stay within the default", () => {
    const state = new Uint8Array(size).fill(3);
    const base = new Uint8Array(size).fill(2);
    expect(decodeSnapshot(encodeSnapshot(state, { base }), { base })).toEqual(state);
  });
});
