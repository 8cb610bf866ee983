// A decoder dropped without end() or abort() gives its memory back once collected (a
// FinalizationRegistry), and `using` disposal aborts it. The collection case runs in a child
// process with --expose-gc against the built package; disposal runs here.
import { execFileSync } from "node:child_process";
import { beforeAll, describe, expect, it } from "vitest";
import { core } from "../../src/core/instance.js";
import { createDecoder } from "../../src/index.js";
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
  it("Symbol.dispose (what `using` calls) aborts: the core memory a 1 GiB claim took is back", () => {
    const before = core().allocatedBytes;
    const decoder = createDecoder({ maxRecordPayload: 16 << 20 });
    decoder.push(claim);
    expect(core().allocatedBytes).toBeGreaterThan(before + GiB - 1);
    decoder[Symbol.dispose]();
    expect(core().allocatedBytes).toBe(before);
    // Disposing a finished or aborted decoder again is harmless.
    decoder[Symbol.dispose]();
    expect(core().allocatedBytes).toBe(before);
  });

  it("the disposal key is Symbol.dispose, which on Node is the registered nodejs.dispose symbol", () => {
    expect(typeof createDecoder()[Symbol.dispose]).toBe("function");
    expect(Symbol.dispose).toBe(Symbol.for("nodejs.dispose"));
  });

  it("ten 1 GiB claims dropped without end() or abort() are released once collected (three would fill the core)", { timeout: 60_000 }, () => {
    const out = execFileSync(process.execPath, ["--expose-gc", "bench/claims-rss.mjs", "decoder", "dropped", "10"], { cwd: ROOT, encoding: "utf8" });
    const result = JSON.parse(out.trim().split("\n").pop()!) as { coreBefore: number; coreAfter: number; codes: Record<string, number> };
    expect(result.codes).toEqual({ ok: 10 });
    expect(result.coreAfter).toBe(result.coreBefore);
  });
});
