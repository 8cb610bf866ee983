// Limits you can see: --max-pages-applied on every command that decodes. One LZ4 record of about
// 4 KB writes 1 MiB (256 pages), so the budget, not the stream's size, bounds a reader's writes.
import { existsSync, writeFileSync } from "node:fs";
import { beforeAll, describe, expect, it } from "vitest";
import { finished, run, start, tempFiles, useTestDir, waitForStderr } from "./helpers.js";

const scratch = useTestDir();
const { at } = scratch;

beforeAll(async () => {
  writeFileSync(at("rep.state"), Buffer.alloc(4 << 20, "abcdefgh-pattern-"));
  const encoded = await run(["encode", at("rep.state"), "-o", at("rep.mig"), "--compress", "lz4", "--quiet"]);
  expect(encoded.code, encoded.stderr).toBe(0);
});

describe("--max-pages-applied", () => {
  it("4 LZ4 records of ~4 KB write 1024 pages: a budget of 512 refuses the stream (E2BIG, exit 2) in decode, verify and inspect", async () => {
    const decoded = await run(["decode", at("rep.mig"), "-o", at("small-budget.state"), "--max-pages-applied", "512"]);
    expect(decoded.code, decoded.stderr).toBe(2);
    expect(decoded.stderr).toMatch(/E2BIG: .*maxPagesApplied.* at record 2, byte \d+ \(tag 0x04\)/);
    expect(existsSync(at("small-budget.state"))).toBe(false);
    const verified = await run(["verify", at("rep.mig"), "--max-pages-applied", "512"]);
    expect(verified.code, verified.stderr).toBe(2);
    expect(verified.stderr).toMatch(/E2BIG/);
    const inspected = await run(["inspect", at("rep.mig"), "--max-pages-applied", "512"]);
    expect(inspected.code, inspected.stderr).toBe(2);
    expect(`${inspected.stdout}${inspected.stderr}`).toMatch(/E2BIG/);
    expect(tempFiles(scratch.dir)).toEqual([]);
  });

  it("a budget of exactly the pages written passes", async () => {
    const decoded = await run(["decode", at("rep.mig"), "-o", at("exact.state"), "--max-pages-applied", "1024"]);
    expect(decoded.code, decoded.stderr).toBe(0);
  });

  it("receive refuses with ERR E2BIG: both ends exit 2, nothing written", async () => {
    const child = start(["receive", "--listen", "0", "-o", at("received.state"), "--max-pages-applied", "300"]);
    const done = finished(child);
    const port = Number((await waitForStderr(child, /listening on [^\s]+:(\d+)/))[1]);
    const sent = await run(["send", at("rep.state"), "--to", String(port), "--compress", "lz4"]);
    const received = await done;
    expect(received.code, received.stderr).toBe(2);
    expect(received.stderr).toMatch(/E2BIG/);
    expect(sent.code, sent.stderr).toBe(2);
    expect(sent.stderr).toMatch(/E2BIG/);
    expect(existsSync(at("received.state"))).toBe(false);
  });

  it("a budget that is not a whole number of pages is a usage error (exit 1)", async () => {
    for (const bad of ["0", "-3", "1.5", "lots"]) {
      const result = await run(["verify", at("rep.mig"), "--max-pages-applied", bad]);
      expect(result.code, result.stderr).toBe(1);
      expect(result.stderr).toMatch(/EINVAL: invalid --max-pages-applied/);
    }
  });
});
