// `migstream decode` of a tiny hostile stream: 300 ZERO records, each over a whole 1 GiB state
// (under 10 KB). Its work must follow its bytes plus the state size: the repeated coverage is
// absorbed, and the output file (new, so all zeros already) gets no zeros written at all.
import { statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, expect, it } from "vitest";
import { StreamBuilder } from "../codec/stream-builder.js";
import { ensureBuilt, run, tempDir, tempFiles } from "./helpers.js";

const GiB = 2 ** 30;
const { dir, cleanup } = tempDir();
beforeAll(ensureBuilt);
afterAll(cleanup);

it("decode of 300 ZERO records over 1 GiB finishes quickly and leaves a sparse file", async () => {
  const b = new StreamBuilder({ regions: [{ name: "state", size: GiB }], pageSize: 4096, maxRecordPayload: 65536 });
  for (let i = 0; i < 300; i++) b.zero(0, 0, GiB / 4096);
  const stream = b.end().bytes();
  expect(stream.length).toBeLessThan(10_000);
  writeFileSync(join(dir, "zeros.mig"), stream);
  const started = performance.now();
  // Generous: the machine running the tests may be loaded. Writing 300 GiB would take hours.
  const result = await run(["decode", join(dir, "zeros.mig"), "-o", join(dir, "zeros.state")], { timeoutMs: 60_000 });
  expect(result.code, result.stderr).toBe(0);
  expect(performance.now() - started).toBeLessThan(30_000);
  const st = statSync(join(dir, "zeros.state"));
  expect(st.size).toBe(GiB);
  expect(st.blocks * 512).toBeLessThan(1024 * 1024);
  expect(tempFiles(dir).filter((f) => f.includes("migstream-tmp"))).toEqual([]);
});

it("verify gives the same verdict as decode, as quickly", async () => {
  const started = performance.now();
  const result = await run(["verify", join(dir, "zeros.mig")], { timeoutMs: 60_000 });
  expect(result.code, result.stderr).toBe(0);
  expect(performance.now() - started).toBeLessThan(30_000);
});
