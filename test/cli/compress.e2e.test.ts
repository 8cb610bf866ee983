// --compress lz4 through the real binary: encode, diff, inspect, decode and apply round trips,
// and send/receive and demo over loopback TCP.
import { readFileSync, writeFileSync } from "node:fs";
import { beforeAll, describe, expect, it } from "vitest";
import { xxh3Reference } from "../../src/core/reference/xxh3.js";
import { finished, makeState, run, start, tempFiles, useTestDir, waitForStderr } from "./helpers.js";

const SIZE = 2 * 1024 * 1024 + 777;

const scratch = useTestDir();
const { at } = scratch;

beforeAll(async () => {
  const v1 = makeState(SIZE, 5);
  writeFileSync(at("v1.state"), v1);
  const v2 = Buffer.from(v1);
  for (const page of [2, 40, 41]) v2.write("changed!", page * 4096 + 10);
  v2.fill("xyz", 300 * 4096, 302 * 4096);
  writeFileSync(at("v2.state"), v2);
});

interface EncodeJson {
  bytes: number;
  pages: { raw: number; lz4: number; zero: number };
  compressed: { records: number; bytes: number };
}

describe("--compress lz4 on the codec commands", () => {
  it("encode, inspect and decode: a smaller 1.1 stream, the state byte for byte", async () => {
    const [plain, packed] = await Promise.all([
      run(["encode", at("v1.state"), "-o", at("plain.mig"), "--json"]),
      run(["encode", at("v1.state"), "-o", at("lz4.mig"), "--compress", "lz4", "--json"]),
    ]);
    expect(plain.code, plain.stderr).toBe(0);
    expect(packed.code, packed.stderr).toBe(0);
    const p = JSON.parse(plain.stdout.toString()) as EncodeJson;
    const c = JSON.parse(packed.stdout.toString()) as EncodeJson;
    expect(c.pages.lz4).toBeGreaterThan(0);
    expect(c.compressed.records).toBeGreaterThan(0);
    expect(c.bytes).toBeLessThan(p.bytes);
    expect(readFileSync(at("lz4.mig"))[10]).toBe(1);

    const inspected = await run(["inspect", at("lz4.mig"), "--json"]);
    expect(inspected.code, inspected.stderr).toBe(0);
    const report = JSON.parse(inspected.stdout.toString()) as {
      header: { version: string; compression: string };
      pages: { lz4: number };
      bytesByKind: { lz4: number };
      compressed: { records: number; bytes: number; ratio: number };
      valid: boolean;
    };
    expect(report.valid).toBe(true);
    expect(report.header).toMatchObject({ version: "1.1", compression: "lz4" });
    expect(report.pages.lz4).toBe(c.pages.lz4);
    expect(report.compressed.records).toBe(c.compressed.records);
    expect(report.compressed.bytes).toBe(c.compressed.bytes);
    expect(report.bytesByKind.lz4).toBe(c.compressed.bytes + 32 * c.compressed.records);
    expect(report.compressed.ratio).toBeGreaterThan(0);
    expect(report.compressed.ratio).toBeLessThan(1);
    const text = await run(["inspect", at("lz4.mig")]);
    expect(text.stdout.toString()).toMatch(/lz4\s+\d+ records\s+\d+ pages .*% of /);

    const decoded = await run(["decode", at("lz4.mig"), "-o", at("lz4.state"), "--quiet"]);
    expect(decoded.code, decoded.stderr).toBe(0);
    expect(readFileSync(at("lz4.state")).equals(readFileSync(at("v1.state")))).toBe(true);
    expect(tempFiles(scratch.dir)).toEqual([]);
  });

  it("diff and apply with compression", async () => {
    const diffed = await run(["diff", at("v1.state"), at("v2.state"), "-o", at("d.mig"), "--compress", "lz4", "--quiet"]);
    expect(diffed.code, diffed.stderr).toBe(0);
    const applied = await run(["apply", at("v1.state"), at("d.mig"), "-o", at("v2.applied"), "--quiet"]);
    expect(applied.code, applied.stderr).toBe(0);
    expect(readFileSync(at("v2.applied")).equals(readFileSync(at("v2.state")))).toBe(true);
  });

  it("a malformed LZ4 block under a valid checksum fails decode (exit 2, EBADMSG), leaving no output", async () => {
    const bytes = Buffer.from(readFileSync(at("lz4.mig")));
    // The first LZ4 record: its block starts with a literal length running far past its end.
    let pos = bytes.readUInt32LE(12);
    while (bytes[pos] !== 0x04) pos += 32 + bytes.readUInt32LE(pos + 4);
    const payload = bytes.readUInt32LE(pos + 4);
    bytes.fill(0xff, pos + 24 + 4, pos + 24 + 4 + 8);
    bytes.writeBigUInt64LE(xxh3Reference(bytes.subarray(pos, pos + 24 + payload)), pos + 24 + payload);
    writeFileSync(at("bad.mig"), bytes);
    const result = await run(["decode", at("bad.mig"), "-o", at("bad.state")]);
    expect(result.code).toBe(2);
    expect(result.stderr.toString()).toMatch(/EBADMSG: malformed LZ4 block at record \d+, byte \d+/);
    expect(tempFiles(scratch.dir)).toEqual([]);
  });

  it("an unknown --compress value is a usage error", async () => {
    const result = await run(["encode", at("v1.state"), "-o", at("x.mig"), "--compress", "zstd"]);
    expect(result.code).not.toBe(0);
    expect(result.stderr.toString()).toMatch(/compress/);
  });
});

describe("--compress lz4 over TCP", () => {
  it("send --compress lz4 to receive: identical state", async () => {
    const child = start(["receive", "--listen", "0", "-o", at("recv.state"), "--json"]);
    const match = await waitForStderr(child, /listening on [^\s]+:(\d+)/);
    const done = finished(child);
    const sent = await run(["send", at("v1.state"), "--to", match[1]!, "--compress", "lz4", "--json"]);
    const received = await done;
    expect(sent.code, sent.stderr).toBe(0);
    expect(received.code, received.stderr).toBe(0);
    expect(readFileSync(at("recv.state")).equals(readFileSync(at("v1.state")))).toBe(true);
  });

  it("demo --compress lz4 verifies the migrated state", async () => {
    const result = await run(["demo", "--size", "4M", "--compress", "lz4", "--json"]);
    expect(result.code, result.stderr).toBe(0);
    const value = JSON.parse(result.stdout.toString()) as { verification: { identical: boolean } };
    expect(value.verification.identical).toBe(true);
  });
});
