// The HTML report as a pure function of a MigrationReport: escaped text, one bar per round plus
// stop-copy, and a sane page for a migration without pre-copy rounds.
import { describe, expect, it } from "vitest";
import { migrationReportHtml } from "../../src/cli/report.js";
import type { MigrationReport } from "../../src/migration/precopy.js";

const base: MigrationReport = {
  rounds: [],
  converged: "no-precopy",
  initialDataSent: true,
  bytes: 4096,
  stopCopyBytes: 4096,
  downtimeMs: 1.5,
  durationMs: 3,
  throughput: 1e6,
};

describe("migrationReportHtml", () => {
  it("charts each round and the stop-copy, with the threshold and the measured downtime as rules", () => {
    const rounds = [0, 1, 2].map((round) => ({
      round,
      pages: 10 - round,
      bytes: (10 - round) * 4096,
      dirtyBytes: (3 - round) << 20,
      durationMs: 5,
      dirtyRate: 1e6,
      expectedDowntimeMs: 3 - round,
    }));
    const html = migrationReportHtml({ ...base, rounds, converged: "threshold" }, { title: "t", thresholdBytes: 1 << 20 });
    expect(html.match(/<rect class="bar"/g)).toHaveLength(4);
    expect(html.match(/<polyline class="line"/g)).toHaveLength(3);
    expect(html.match(/<line class="rule"/g)).toHaveLength(2);
    expect(html).toContain("threshold (1.0 MiB)");
    expect(html).not.toMatch(/NaN|Infinity|<script/);
  });

  it("every bar shows, with its value: a small stop-copy beside a large first round", () => {
    const rounds = [{ round: 0, pages: 42_000, bytes: 166 << 20, dirtyBytes: 4 << 20, durationMs: 500, dirtyRate: 8e6, expectedDowntimeMs: 12 }];
    const html = migrationReportHtml({ ...base, rounds, stopCopyBytes: 88 << 10, converged: "threshold" }, { title: "t", thresholdBytes: 1 << 20 });
    const bars = [...html.matchAll(/<rect class="bar"[^>]* height="([\d.]+)"/g)].map((m) => Number(m[1]));
    expect(bars).toHaveLength(2);
    for (const height of bars) expect(height).toBeGreaterThanOrEqual(3);
    const values = [...html.matchAll(/<text class="value"[^>]*>([^<]*)</g)].map((m) => m[1]);
    expect(values).toEqual(["166.0 MiB", "88.0 KiB"]);
  });

  it("escapes the title and facts, and draws a migration without pre-copy rounds", () => {
    const html = migrationReportHtml(base, { title: "<b>&x</b>", thresholdBytes: 0, facts: [["device", '"a" <b>']] });
    expect(html).toContain("&lt;b&gt;&amp;x&lt;/b&gt;");
    expect(html).toContain("&quot;a&quot; &lt;b&gt;");
    expect(html).not.toContain("<b>");
    expect(html.match(/<rect class="bar"/g)).toHaveLength(1);
    expect(html).not.toMatch(/NaN|Infinity/);
  });
});
