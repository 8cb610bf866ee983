// End-to-end tests of the codec commands through the real binary: files byte-identical after a
// round trip, pipes, the exit-code contract, atomic outputs (nothing written on failure, nothing
// left behind on SIGINT) and the machine-readable reports.
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { xxh3Reference } from "../../src/core/reference/xxh3.js";
import { FORMAT_MINOR } from "../../src/format/constants.js";
import { migrateOut } from "../../src/migration/precopy.js";
import { MigrationDevice } from "../../src/migration/v2/migration-device.js";
import { ensureBuilt, finished, makeState, run, start, tempDir, tempFiles } from "./helpers.js";

const SIZE = 3 * 1024 * 1024 + 1000; // not a whole number of pages: the last page is partial

let dir: string;
let cleanup: () => void;
const at = (name: string): string => join(dir, name);

let v1: Buffer;
let diffSummary: { pages: { delta: number; clean: number }; bytes: number };
const stream = (): Buffer => readFileSync(at("v1.mig"));

beforeAll(async () => {
  await ensureBuilt();
  ({ dir, cleanup } = tempDir());
  v1 = makeState(SIZE, 7);
  writeFileSync(at("v1.state"), v1);
  // v2: a few pages changed a little (delta-friendly), one page rewritten, one zeroed.
  const next = Buffer.from(v1);
  for (const page of [3, 50, 51, 400]) next.write("changed!", page * 4096 + 100);
  next.fill(0xab, 600 * 4096, 601 * 4096);
  next.fill(0, 700 * 4096, 701 * 4096);
  writeFileSync(at("v2.state"), next);
  writeFileSync(at("other-base.state"), makeState(SIZE, 99));
  const [encoded, diffed] = await Promise.all([
    run(["encode", at("v1.state"), "-o", at("v1.mig"), "--device-id", "nic-v1", "--quiet"]),
    run(["diff", at("v1.state"), at("v2.state"), "-o", at("v1-v2.mig"), "--json"]),
  ]);
  expect(encoded.code, encoded.stderr).toBe(0);
  expect(diffed.code, diffed.stderr).toBe(0);
  diffSummary = JSON.parse(diffed.stdout.toString()) as typeof diffSummary;

  // Damaged copies of v1.mig: one byte flipped mid-stream, cut at 60%, a newer minor version
  // with its header checksum fixed (incompatible), and the same without the fix (corrupt).
  const bytes = stream();
  const flipped = Buffer.from(bytes);
  flipped[Math.floor(bytes.length / 2)]! ^= 0x40;
  writeFileSync(at("flipped.mig"), flipped);
  writeFileSync(at("cut.mig"), bytes.subarray(0, Math.floor(bytes.length * 0.6)));
  const newer = Buffer.from(bytes);
  const view = new DataView(newer.buffer, newer.byteOffset, newer.length);
  view.setUint16(10, FORMAT_MINOR + 1, true);
  writeFileSync(at("stale-checksum.mig"), newer);
  const length = view.getUint32(12, true);
  view.setBigUint64(length - 8, xxh3Reference(newer.subarray(0, length - 8)), true);
  writeFileSync(at("newer.mig"), newer);
});

afterAll(() => cleanup?.());

describe("round trips", () => {
  it("encode then decode gives back the same bytes", async () => {
    const decoded = await run(["decode", at("v1.mig"), "-o", at("rt.state")]);
    expect(decoded.code, decoded.stderr).toBe(0);
    expect(readFileSync(at("rt.state")).equals(readFileSync(at("v1.state")))).toBe(true);
    expect(decoded.stdout.length).toBe(0); // the report is a message: stderr
    expect(decoded.stderr).toMatch(/decoded .* verified/);
    expect(tempFiles(dir)).toEqual([]);
  });

  it("with CRC32C, 64 KiB pages and small records too", async () => {
    const encoded = await run(["encode", at("v1.state"), "-o", at("crc.mig"), "--checksum", "crc32c", "--page-size", "64k", "--max-record", "64k", "--json"]);
    expect(encoded.code, encoded.stderr).toBe(0);
    const summary = JSON.parse(encoded.stdout.toString()) as { checksum: string; stateBytes: number; bytes: number; ratio: number };
    expect(summary.checksum).toBe("crc32c");
    expect(summary.stateBytes).toBe(SIZE);
    expect(summary.bytes).toBe(readFileSync(at("crc.mig")).length);
    const decoded = await run(["decode", at("crc.mig"), "-o", at("crc.state")]);
    expect(decoded.code, decoded.stderr).toBe(0);
    expect(readFileSync(at("crc.state")).equals(readFileSync(at("v1.state")))).toBe(true);
  });

  it("diff then apply rebuilds the new snapshot from the old one, with a much smaller stream", async () => {
    const summary = diffSummary;
    expect(summary.pages.delta).toBeGreaterThan(0);
    expect(summary.bytes).toBeLessThan(SIZE / 20);
    const applied = await run(["apply", at("v1.state"), at("v1-v2.mig"), "-o", at("applied.state")]);
    expect(applied.code, applied.stderr).toBe(0);
    expect(readFileSync(at("applied.state")).equals(readFileSync(at("v2.state")))).toBe(true);
    // The base is only read: it is still v1.
    expect(readFileSync(at("v1.state")).equals(v1)).toBe(true);
  });

  it("pipes: encode - -o - | decode - -o - reproduces stdin on stdout", async () => {
    const input = readFileSync(at("v2.state"));
    const encoder = start(["encode", "-", "-o", "-"]);
    const decoder = start(["decode", "-", "-o", "-"]);
    encoder.stdout!.pipe(decoder.stdin!);
    const [encoded, decoded] = await Promise.all([finished(encoder), finished(decoder), new Promise<void>((resolve) => encoder.stdin!.end(input, resolve))]);
    expect(encoded.code, encoded.stderr).toBe(0);
    expect(decoded.code, decoded.stderr).toBe(0);
    expect(decoded.stdout.equals(input)).toBe(true);
    // Reports went to stderr, never into the data.
    expect(encoded.stderr).toMatch(/encoded/);
    expect(decoded.stderr).toMatch(/decoded/);
  });
});

describe("exit codes", () => {
  it("1 for usage errors", { timeout: 120_000 }, async () => {
    const cases = [[], ["decode", at("v1.mig")], ["encode"], ["frobnicate"], ["encode", at("v1.state"), "-o", at("x.mig"), "--page-size", "1000"]];
    const results = await Promise.all(cases.map((args) => run(args)));
    results.forEach((result, i) => expect(result.code, `${cases[i]!.join(" ")}: ${result.stderr}`).toBe(1));
    expect(existsSync(at("x.mig"))).toBe(false);
  });

  it("0 for --help and --version, with the help on stdout and an example", async () => {
    const help = await run(["decode", "--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout.toString()).toMatch(/Example/);
    const version = await run(["--version"]);
    expect(version.code).toBe(0);
    expect(version.stdout.toString().trim()).toMatch(/^\d+\.\d+\.\d+/);
  });

  it("2 for a corrupt stream (one byte flipped), and no output file is written", async () => {
    const result = await run(["decode", at("flipped.mig"), "-o", at("flipped.state")]);
    expect(result.code, result.stderr).toBe(2);
    expect(result.stderr).toMatch(/EBADMSG/);
    expect(existsSync(at("flipped.state"))).toBe(false);
    expect(tempFiles(dir)).toEqual([]);
  });

  it("2 for a corrupt stream leaves an existing output file as it was", async () => {
    writeFileSync(at("keep.state"), "previous content");
    const result = await run(["decode", at("flipped.mig"), "-o", at("keep.state"), "-f"]);
    expect(result.code).toBe(2);
    expect(readFileSync(at("keep.state"), "utf8")).toBe("previous content");
    expect(tempFiles(dir)).toEqual([]);
  });

  it("2 for an incomplete stream (truncated), read from a file or from stdin", async () => {
    const bytes = stream();
    const fromFile = await run(["decode", at("cut.mig"), "-o", at("cut.state")]);
    expect(fromFile.code, fromFile.stderr).toBe(2);
    expect(fromFile.stderr).toMatch(/ENODATA/);
    expect(existsSync(at("cut.state"))).toBe(false);
    const fromStdin = await run(["decode", "-", "-o", at("cut.state")], { input: bytes.subarray(0, bytes.length - 1) });
    expect(fromStdin.code, fromStdin.stderr).toBe(2);
    expect(existsSync(at("cut.state"))).toBe(false);
    // Stdout carries decoded data only once all of it verified: nothing here.
    const toStdout = await run(["decode", "-", "-o", "-"], { input: bytes.subarray(0, bytes.length - 1) });
    expect(toStdout.code).toBe(2);
    expect(toStdout.stdout.length).toBe(0);
  });

  it("3 for an incremental stream applied to the wrong base", async () => {
    const result = await run(["apply", at("other-base.state"), at("v1-v2.mig"), "-o", at("wrong.state")]);
    expect(result.code, result.stderr).toBe(3);
    expect(result.stderr).toMatch(/ESTALE/);
    expect(existsSync(at("wrong.state"))).toBe(false);
  });

  it("3 for a stream made for another device id", async () => {
    const result = await run(["decode", at("v1.mig"), "-o", at("wrong.state"), "--device-id", "nic-v2"]);
    expect(result.code, result.stderr).toBe(3);
    expect(result.stderr).toMatch(/ENODEV/);
    expect(existsSync(at("wrong.state"))).toBe(false);
    expect((await run(["decode", at("v1.mig"), "-o", at("right.state"), "--device-id", "nic-v1"])).code).toBe(0);
  });

  it("3 for a stream of a newer minor version (valid header checksum), 2 if the checksum is not fixed", async () => {
    const newer = await run(["decode", at("newer.mig"), "-o", at("newer.state")]);
    expect(newer.code, newer.stderr).toBe(3);
    expect(newer.stderr).toMatch(/EPROTONOSUPPORT/);
    expect(existsSync(at("newer.state"))).toBe(false);
    // A damaged version field reads as corrupt, not incompatible.
    const damaged = await run(["decode", at("stale-checksum.mig"), "-o", at("newer.state")]);
    expect(damaged.code, damaged.stderr).toBe(2);
  });

  it("4 for a missing input file", async () => {
    const decode = await run(["decode", at("no-such.mig"), "-o", at("x.state")]);
    expect(decode.code, decode.stderr).toBe(4);
    const encode = await run(["encode", at("no-such.state"), "-o", at("x.mig")]);
    expect(encode.code, encode.stderr).toBe(4);
    expect(existsSync(at("x.mig"))).toBe(false);
    expect(existsSync(at("x.state"))).toBe(false);
  });
});

describe("interruption", () => {
  it("SIGINT during a decode from a slow stdin leaves the existing output untouched and no temporary file", async () => {
    writeFileSync(at("live.state"), "the previous snapshot");
    const bytes = stream();
    const child = start(["decode", "-", "-o", at("live.state"), "-f"]);
    const done = finished(child);
    child.stdin!.on("error", () => undefined);
    // Half the stream, then nothing: the decoder has opened its temporary output and waits.
    child.stdin!.write(bytes.subarray(0, bytes.length >> 1));
    const deadline = Date.now() + 30_000;
    while (tempFiles(dir).length === 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
    expect(tempFiles(dir).length).toBe(1);
    child.kill("SIGINT");
    const result = await done;
    expect(result.code, result.stderr).toBe(130);
    expect(result.stderr).toMatch(/interrupted/);
    expect(readFileSync(at("live.state"), "utf8")).toBe("the previous snapshot");
    expect(tempFiles(dir)).toEqual([]);
  });
});

interface InspectJson {
  header: {
    version: string;
    checksum: string;
    pageSize: number;
    totalSize: number;
    deviceId: string;
    incremental: boolean;
    regions: { name: string; size: number }[];
  };
  records: { pages: number; zero: number; delta: number; config: number; round: number; skipped: number; end: number };
  pages: { raw: number; zero: number; delta: number };
  bytes: number;
  bytesByKind: { pages: number; zero: number; delta: number };
  rounds: { round: number; pages: number; bytes: number; dirtyBytes: number }[];
  ratio: number | null;
  valid: boolean;
  error?: { code: string; message: string; recordIndex: number | null; byteOffset: number | null };
}

describe("inspect and verify", () => {
  it("inspect --json describes the header, records by kind, bytes and ratio", async () => {
    const result = await run(["inspect", at("v1.mig"), "--json"]);
    expect(result.code, result.stderr).toBe(0);
    const report = JSON.parse(result.stdout.toString()) as InspectJson;
    expect(report.header).toMatchObject({ version: "1.0", checksum: "xxh3", pageSize: 4096, totalSize: SIZE, deviceId: "nic-v1", incremental: false });
    expect(report.header.regions).toEqual([{ name: "state", size: SIZE }]);
    expect(report.records.pages).toBeGreaterThan(0);
    expect(report.records.zero).toBeGreaterThan(0);
    expect(report.records.end).toBe(1);
    expect(report.pages.raw + report.pages.zero).toBe(Math.ceil(SIZE / 4096));
    expect(report.bytes).toBe(readFileSync(at("v1.mig")).length);
    expect(report.ratio).toBeCloseTo(report.bytes / SIZE, 6);
    expect(report.rounds).toEqual([]);
    expect(report.valid).toBe(true);
    expect(report.error).toBeUndefined();
  });

  it("inspect --json of an incremental stream counts delta records", async () => {
    const result = await run(["inspect", at("v1-v2.mig"), "--json"]);
    expect(result.code, result.stderr).toBe(0);
    const report = JSON.parse(result.stdout.toString()) as InspectJson;
    expect(report.header.incremental).toBe(true);
    expect(report.records.delta).toBeGreaterThan(0);
    expect(report.bytesByKind.delta).toBeGreaterThan(0);
  });

  it("inspect --json lists the pre-copy rounds of a live-migration stream", async () => {
    const device = new MigrationDevice({ regions: [{ name: "ram", size: 256 * 1024 }], deviceId: "live" });
    device.write("ram", 0, makeState(256 * 1024, 3));
    const chunks: Uint8Array[] = [];
    await migrateOut(device, {
      send: (chunk) => {
        chunks.push(chunk.slice());
      },
    });
    device.free();
    writeFileSync(at("live.mig"), Buffer.concat(chunks));
    const result = await run(["inspect", at("live.mig"), "--json"]);
    expect(result.code, result.stderr).toBe(0);
    const report = JSON.parse(result.stdout.toString()) as InspectJson;
    expect(report.rounds.length).toBeGreaterThanOrEqual(1);
    expect(report.rounds[0]).toMatchObject({ round: 0, pages: 64 });
    expect(report.records.round).toBe(report.rounds.length);
    expect(report.valid).toBe(true);
  });

  it("inspect of a corrupt stream reports the problem with its record index and byte offset, and exits 2", async () => {
    const result = await run(["inspect", at("flipped.mig"), "--json"]);
    expect(result.code).toBe(2);
    const report = JSON.parse(result.stdout.toString()) as InspectJson;
    expect(report.valid).toBe(false);
    expect(report.error?.code).toBe("EBADMSG");
    expect(report.error?.recordIndex).toBeTypeOf("number");
    expect(report.error?.byteOffset).toBeTypeOf("number");
    // The damaged byte lies inside the record the problem names.
    const flippedAt = Math.floor(readFileSync(at("v1.mig")).length / 2);
    expect(report.error!.byteOffset!).toBeLessThanOrEqual(flippedAt);
    expect(flippedAt - report.error!.byteOffset!).toBeLessThan(1 << 21);
    const text = await run(["inspect", at("flipped.mig")]);
    expect(text.code).toBe(2);
    expect(text.stdout.toString()).toMatch(/problem\s+EBADMSG/);
  });

  it("verify exits 0, 2, 2, 3 and 4 for valid, corrupt, truncated, foreign and missing streams", { timeout: 120_000 }, async () => {
    const cases: [string[], number][] = [
      [["verify", at("v1.mig")], 0],
      [["verify", at("v1-v2.mig"), "--base", at("v1.state")], 0],
      [["verify", at("flipped.mig")], 2],
      [["verify", at("cut.mig")], 2],
      [["verify", at("v1.mig"), "--device-id", "nic-v9"], 3],
      [["verify", at("v1-v2.mig"), "--base", at("other-base.state")], 3],
      [["verify", at("newer.mig")], 3],
      [["verify", at("no-such.mig")], 4],
    ];
    const results = await Promise.all(cases.map(([args]) => run(args)));
    results.forEach((result, i) => {
      const [args, code] = cases[i]!;
      expect(result.code, `${args.join(" ")}: ${result.stderr}`).toBe(code);
    });
    const json = await run(["verify", at("v1.mig"), "--json"]);
    expect(JSON.parse(json.stdout.toString())).toMatchObject({ valid: true, ended: true });
  });
});
