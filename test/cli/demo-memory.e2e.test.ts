// The demo holds two copies of its device in one process (the source, and the target's staging
// the stream is decoded into); everything else must stay small: peak RSS within 2 x the device
// + 96 MiB (Node itself is about 50 MiB of it). Without collecting the receiving end's socket
// read buffers as it goes (src/cli/gc-pacer.ts) it was about 25 MiB over.
import { describe, expect, it } from "vitest";
import { run, useTestDir } from "./helpers.js";

useTestDir();

describe("demo memory", () => {
  it("peak RSS stays within 2 x the device + 96 MiB", { timeout: 120_000 }, async () => {
    const device = 64 << 20;
    const result = await run(["demo", "--size", "64M", "--json"]);
    expect(result.code, result.stderr).toBe(0);
    const report = JSON.parse(result.stdout.toString()) as { maxRssBytes: number; verification: { identical: boolean } };
    expect(report.verification.identical).toBe(true);
    expect(report.maxRssBytes).toBeLessThanOrEqual(2 * device + (96 << 20));
  });
});
