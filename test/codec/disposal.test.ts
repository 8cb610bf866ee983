// A decoder dropped without end() or abort() gives its memory back once collected (a
// FinalizationRegistry), and `using` disposal aborts it. The collection case runs in a child
// process with --expose-gc against the built package; disposal runs here.
import { execFileSync } from "node:child_process";
import { beforeAll, describe, expect, it } from "vitest";
import { StreamDecoder } from "../../src/codec/decoder.js";
import { core } from "../../src/core/instance.js";
import { createDecoder, encodeSnapshot } from "../../src/index.js";
import { encodeHeader } from "../../src/format/header.js";
import { ensureBuilt, ROOT } from "../cli/helpers.js";

const GiB = 1024 ** 3;
const claim = encodeHeader({
  checksum: "xxh3",
  pageSize: 4096,
  maxRecordPayload: 16 << 20,
  deviceId: "",
  baseDigest: undefined,
  regions: [{ name: "state", size: GiB }],
}).bytes;

beforeAll(ensureBuilt, 300_000);

describe("decoders that are not finished", () => {
  it("Symbol.dispose (what `using` calls) aborts: the core memory a claim took is back", () => {
    const before = core().allocatedBytes;
    const decoder = createDecoder({ maxRecordPayload: 16 << 20 });
    decoder.push(claim);
    // A first record window and the bitmaps; no staging until a page arrives.
    expect(core().allocatedBytes).toBeGreaterThan(before);
    expect(core().allocatedBytes).toBeLessThan(before + (1 << 20));
    decoder[Symbol.dispose]();
    expect(core().allocatedBytes).toBe(before);
    // Disposing a finished or aborted decoder again is harmless.
    decoder[Symbol.dispose]();
    expect(core().allocatedBytes).toBe(before);
  });

  it("the record window grows with records that arrive: 300 claims of 16 MiB records at once fit, a 4 MiB record pushed in 64 KiB chunks decodes", () => {
    const before = core().allocatedBytes;
    const claims = Array.from({ length: 300 }, () => {
      const decoder = createDecoder({ maxRecordPayload: 16 << 20 });
      decoder.push(claim);
      return decoder;
    });
    expect(core().allocatedBytes - before).toBeLessThan(300 * (512 << 10));
    for (const d of claims) d.abort();
    const state = new Uint8Array(8 << 20).map((_, i) => (i * 2654435761) >>> 24);
    const stream = encodeSnapshot(state, { maxRecordPayload: 4 << 20 });
    const decoder = createDecoder({ maxRecordPayload: 4 << 20 });
    for (let at = 0; at < stream.length; at += 64 << 10) decoder.push(stream.subarray(at, at + (64 << 10)));
    decoder.end();
    expect(Buffer.from(decoder.result()).equals(Buffer.from(state))).toBe(true);
    expect(core().allocatedBytes).toBeLessThanOrEqual(before + (8 << 20) + (1 << 20));
  });

  it("a header that allows LZ4 takes no LZ4 scratch until an LZ4 record arrives (targets that take decoded records)", () => {
    const lz4Claim = encodeHeader({
      checksum: "xxh3",
      pageSize: 4096,
      maxRecordPayload: 16 << 20,
      deviceId: "",
      baseDigest: undefined,
      compression: "lz4",
      regions: [{ name: "state", size: GiB }],
    }).bytes;
    const discard = { open: () => undefined, apply: () => undefined, commit: () => undefined, abort: () => undefined };
    const before = core().allocatedBytes;
    const decoders = Array.from({ length: 300 }, () => {
      const decoder = new StreamDecoder(discard);
      decoder.push(lz4Claim);
      return decoder;
    });
    expect(core().allocatedBytes - before).toBeLessThan(300 * (512 << 10));
    for (const d of decoders) d.abort();
    // An LZ4 stream still verifies through such a target.
    const state = new Uint8Array(4 << 20).fill(3);
    const stream = encodeSnapshot(state, { compress: "lz4" });
    const verifier = new StreamDecoder(discard);
    verifier.push(stream, true);
    expect(verifier.summary().records.lz4).toBeGreaterThan(0);
    expect(core().allocatedBytes).toBe(before);
  });

  it("the disposal key is the runtime's Symbol.dispose (Node 20 and 22: the registered nodejs.dispose symbol; Node 24: V8's own)", () => {
    expect(typeof Symbol.dispose).toBe("symbol");
    const decoder = createDecoder();
    expect(typeof decoder[Symbol.dispose]).toBe("function");
    decoder.abort();
  });

  it("ten decoders each staging 1 GiB, dropped without end() or abort(), are released once collected (three fill the core)", { timeout: 60_000 }, () => {
    const out = execFileSync(process.execPath, ["--expose-gc", "bench/claims-rss.mjs", "decoder", "dropped", "10", "page"], { cwd: ROOT, encoding: "utf8" });
    const result = JSON.parse(out.trim().split("\n").pop()!) as { coreBefore: number; coreAfter: number; codes: Record<string, number> };
    expect(result.codes).toEqual({ ok: 10 });
    expect(result.coreAfter).toBe(result.coreBefore);
  });
});
