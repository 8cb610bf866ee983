// The progress line's layout: fitted to the width at any width, facts dropped before wrapping.
import { describe, expect, it } from "vitest";
import { formatDuration, Progress } from "../../src/cli/progress.js";
import { sizeFlag } from "../../src/cli/format.js";
import { targetMet } from "../../bench/harness.js";

describe("Progress.render", () => {
  it("fits every width from 20 to 200 columns and keeps the label", () => {
    const p = new Progress("decode", { progress: false });
    p.phase("pre-copy round 3", 1 << 30);
    p.update(300 << 20, 1 << 30);
    for (let width = 20; width <= 200; width++) {
      const line = p.render(width, performance.now() + 2000);
      expect(line.length).toBeLessThan(width);
      expect(line.startsWith("decode")).toBe(true);
    }
    const wide = p.render(200, performance.now() + 2000);
    expect(wide).toMatch(/pre-copy round 3 {2}300\.0 MiB\/1\.0 GiB {3}29% {2}[\d.]+ MiB\/s {2}ETA \d+:\d\d {2}█+░+$/);
  });

  it("formats durations and size flags", () => {
    expect(formatDuration(5)).toBe("0:05");
    expect(formatDuration(3725)).toBe("1:02:05");
    expect(formatDuration(Number.POSITIVE_INFINITY)).toBe("--:--");
    expect(sizeFlag(64 << 20)).toBe("64M");
    expect(sizeFlag((1 << 30) + 1)).toBe("2G");
  });
});

describe("bench targets", () => {
  const row = { section: "s", size: 1, task: "t", gbps: 1, vsCopy: 0.5 };
  it("checks each clause, ignores notes, and says nothing without a checkable target", () => {
    expect(targetMet({ ...row, target: ">= 0.40x copy (stretch 0.5x), >= 5x TS ref", vs: { "TS ref": 6 } })).toBe(true);
    expect(targetMet({ ...row, target: ">= 0.40x copy, >= 5x TS ref", vs: { "TS ref": 4 } })).toBe(false);
    expect(targetMet({ ...row, target: "peak RSS < 256 MiB", vs: { "peak RSS MiB": 300 } })).toBe(false);
    expect(targetMet({ ...row, target: "cost <= 0.03 of a full round", vs: { "cost of full": 0.01 } })).toBe(true);
    expect(targetMet({ ...row, target: "(one-shot: allocates)" })).toBeUndefined();
    expect(targetMet(row)).toBeUndefined();
  });
});
