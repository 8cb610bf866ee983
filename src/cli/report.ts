// The migration as a picture: one self-contained HTML page (inline CSS and SVG, no script, no
// network) with the pre-copy rounds as charts (bytes per round, dirty rate, dirty bytes left
// against the stop-copy threshold, expected against measured downtime) and the summary table.
import type { MigrationReport } from "../migration/precopy.js";
import { formatBytes } from "./format.js";

export interface ReportContext {
  title: string;
  /** The stop-copy threshold (bytes). */
  thresholdBytes: number;
  /** Rows for the summary table, in order (label, value). */
  facts?: readonly (readonly [string, string])[];
}

const escapeHtml = (text: string): string => text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");

const W = 560;
const H = 220;
const PAD = { left: 70, right: 16, top: 28, bottom: 34 };
/** Height in px of the smallest non-zero bar, so that none disappears beside a large one. */
const MIN_BAR = 3;

/**
 * A round axis maximum for `max` (1, 2, 4, 5 or 8 times a power of ten, in units of `unit`: 1024^k
 * for bytes, so that ticks read 8 MiB rather than 7.6 MiB), and its ticks.
 */
function niceScale(max: number, binary: boolean): { top: number; ticks: number[] } {
  if (!(max > 0)) return { top: 1, ticks: [0, 1] };
  const unit = binary ? 1024 ** Math.max(0, Math.floor(Math.log(max) / Math.log(1024))) : 1;
  const scaled = max / unit;
  const power = 10 ** Math.floor(Math.log10(scaled));
  const top = [1, 2, 4, 5, 8, 10].map((m) => m * power).find((v) => v >= scaled)! * unit;
  return { top, ticks: [0, 0.25, 0.5, 0.75, 1].map((f) => f * top) };
}

interface Series {
  name: string;
  kind: "bars" | "line" | "rule";
  values: readonly number[];
  color: string;
}

/** One chart: rounds along x, bars and lines against one y axis, horizontal rules for limits. */
function chart(id: string, title: string, labels: readonly string[], series: readonly Series[], format: (v: number) => string, binary = true): string {
  const innerW = W - PAD.left - PAD.right;
  const innerH = H - PAD.top - PAD.bottom;
  const { top, ticks } = niceScale(Math.max(0, ...series.flatMap((s) => s.values)), binary);
  const n = Math.max(labels.length, 1);
  const slot = innerW / n;
  const x = (i: number): number => PAD.left + slot * (i + 0.5);
  const y = (v: number): number => PAD.top + innerH - (v / top) * innerH;
  const parts: string[] = [];
  parts.push(`<text x="${PAD.left}" y="18" class="title">${escapeHtml(title)}</text>`);
  for (const t of ticks) {
    parts.push(`<line x1="${PAD.left}" x2="${W - PAD.right}" y1="${y(t).toFixed(1)}" y2="${y(t).toFixed(1)}" class="grid"/>`);
    parts.push(`<text x="${PAD.left - 6}" y="${(y(t) + 4).toFixed(1)}" class="tick" text-anchor="end">${escapeHtml(format(t))}</text>`);
  }
  labels.forEach((label, i) =>
    parts.push(`<text x="${x(i).toFixed(1)}" y="${H - PAD.bottom + 16}" class="tick" text-anchor="middle">${escapeHtml(label)}</text>`),
  );
  const legend: string[] = [];
  for (const s of series) {
    if (s.kind === "bars") {
      const width = Math.max(2, slot * 0.6);
      s.values.forEach((v, i) => {
        // Bars share a linear axis, so a small one (an 88 KiB stop-copy beside a 166 MiB first
        // round) would be a sliver: every non-zero bar is at least MIN_BAR tall, and every bar
        // carries its value above it.
        const height = v > 0 ? Math.max(MIN_BAR, PAD.top + innerH - y(v)) : 0;
        const topY = PAD.top + innerH - height;
        parts.push(
          `<rect class="bar" data-series="${escapeHtml(s.name)}" x="${(x(i) - width / 2).toFixed(1)}" y="${topY.toFixed(1)}" width="${width.toFixed(1)}" height="${height.toFixed(1)}" fill="${s.color}"><title>${escapeHtml(`${labels[i]}: ${format(v)}`)}</title></rect>`,
          `<text class="value" x="${x(i).toFixed(1)}" y="${(topY - 4).toFixed(1)}" text-anchor="middle">${escapeHtml(format(v))}</text>`,
        );
      });
    } else if (s.kind === "line") {
      const points = s.values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
      parts.push(`<polyline class="line" data-series="${escapeHtml(s.name)}" points="${points}" fill="none" stroke="${s.color}" stroke-width="2"/>`);
      s.values.forEach((v, i) =>
        parts.push(
          `<circle cx="${x(i).toFixed(1)}" cy="${y(v).toFixed(1)}" r="3" fill="${s.color}"><title>${escapeHtml(`${labels[i]}: ${format(v)}`)}</title></circle>`,
        ),
      );
    } else {
      const v = s.values[0] ?? 0;
      parts.push(
        `<line class="rule" data-series="${escapeHtml(s.name)}" x1="${PAD.left}" x2="${W - PAD.right}" y1="${y(v).toFixed(1)}" y2="${y(v).toFixed(1)}" stroke="${s.color}" stroke-width="2" stroke-dasharray="6 4"/>`,
      );
    }
    legend.push(`<span><i style="background:${s.color}"></i>${escapeHtml(s.name)}</span>`);
  }
  return `<figure><svg id="${id}" class="chart" role="img" aria-label="${escapeHtml(title)}" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" xmlns="http://www.w3.org/2000/svg">${parts.join("")}</svg><figcaption>${legend.join("")}</figcaption></figure>`;
}

const ms = (v: number): string => `${v < 10 ? v.toFixed(1) : v.toFixed(0)} ms`;
const bytes = (v: number): string => formatBytes(v);
const rate = (v: number): string => `${formatBytes(v)}/s`;

/** The report page for one migration. */
export function migrationReportHtml(report: MigrationReport, context: ReportContext): string {
  const rounds = report.rounds;
  const labels = [...rounds.map((r) => `round ${r.round}`), "stop-copy"];
  const charts = [
    chart(
      "chart-bytes",
      "Stream bytes per round",
      labels,
      [{ name: "bytes sent", kind: "bars", values: [...rounds.map((r) => r.bytes), report.stopCopyBytes], color: "#3b6fb6" }],
      bytes,
    ),
    chart(
      "chart-dirty",
      "Dirty bytes left vs the stop-copy threshold",
      labels.slice(0, -1),
      [
        { name: "dirty bytes left", kind: "line", values: rounds.map((r) => r.dirtyBytes), color: "#c2571a" },
        { name: `threshold (${formatBytes(context.thresholdBytes)})`, kind: "rule", values: [context.thresholdBytes], color: "#5a9a3a" },
      ],
      bytes,
    ),
    chart(
      "chart-rate",
      "Dirty rate during each round",
      labels.slice(0, -1),
      [{ name: "dirty rate", kind: "line", values: rounds.map((r) => r.dirtyRate), color: "#8a4fb0" }],
      rate,
    ),
    chart(
      "chart-downtime",
      "Expected downtime vs the measured downtime",
      labels.slice(0, -1),
      [
        { name: "expected downtime", kind: "line", values: rounds.map((r) => r.expectedDowntimeMs), color: "#b03a48" },
        { name: `measured downtime (${ms(report.downtimeMs)})`, kind: "rule", values: [report.downtimeMs], color: "#222" },
      ],
      ms,
      false,
    ),
  ];
  const summary: (readonly [string, string])[] = [
    ...(context.facts ?? []),
    ["pre-copy rounds", String(rounds.length)],
    ["pre-copy ended", report.converged],
    ["stop-copy", formatBytes(report.stopCopyBytes)],
    ["stream bytes", formatBytes(report.bytes)],
    ["duration", `${(report.durationMs / 1000).toFixed(2)} s`],
    ["throughput", rate(report.throughput)],
    ["downtime (measured)", ms(report.downtimeMs)],
    ["stop-copy threshold", formatBytes(context.thresholdBytes)],
  ];
  const roundRows = rounds
    .map(
      (r) =>
        `<tr><td>${r.round}</td><td>${r.pages}</td><td>${bytes(r.bytes)}</td><td>${bytes(r.dirtyBytes)}</td><td>${rate(r.dirtyRate)}</td><td>${ms(r.expectedDowntimeMs)}</td><td>${ms(r.durationMs)}</td></tr>`,
    )
    .join("");
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>${escapeHtml(context.title)}</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:20px;margin:0 0 12px}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(${W}px,1fr));gap:12px}
figure{margin:0;border:1px solid #ddd;border-radius:6px;padding:6px}
svg{max-width:100%;height:auto}
.title{font-size:13px;font-weight:600;fill:#222}.tick{font-size:11px;fill:#555}.value{font-size:11px;fill:#222}.grid{stroke:#eee}
figcaption{font-size:12px;color:#444}figcaption span{margin-right:14px}figcaption i{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:middle}
table{border-collapse:collapse;margin:12px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f5f5f5}td:first-child,th:first-child{text-align:left}
</style></head>
<body>
<h1>${escapeHtml(context.title)}</h1>
<section class="charts">${charts.join("\n")}</section>
<h2>Summary</h2>
<table id="summary"><tbody>${summary.map(([k, v]) => `<tr><th>${escapeHtml(k)}</th><td>${escapeHtml(v)}</td></tr>`).join("")}</tbody></table>
<h2>Rounds</h2>
<table id="rounds"><thead><tr><th>round</th><th>pages</th><th>bytes</th><th>dirty left</th><th>dirty rate</th><th>exp. downtime</th><th>time</th></tr></thead><tbody>${roundRows}</tbody></table>
</body></html>
`;
}
