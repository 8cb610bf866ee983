// The HTML report of a migration (demo/send --report), opened in a real headless Chromium
// (Debian's /usr/bin/chromium, driven by playwright-core): the page loads without any network
// request, holds the four charts with one bar per round plus stop-copy, and the summary table.
// MIGSTREAM_UPDATE_SCREENSHOT=1 also writes docs/img/report.png for the README.
import { existsSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { describe, expect, it } from "vitest";
import { ROOT, run, useTestDir } from "./helpers.js";

const CHROMIUM = "/usr/bin/chromium";
const hasChromium = existsSync(CHROMIUM);
if (!hasChromium) console.warn(`report.e2e: ${CHROMIUM} is not installed; the browser check is skipped (apt-get install chromium)`);

const scratch = useTestDir();

describe("demo --report", () => {
  it("writes a self-contained page: inline SVG, no script, nothing fetched", async () => {
    const path = join(scratch.dir, "demo.html");
    const result = await run(["demo", "--size", "16M", "--dirty-rate", "8M/s", "--report", path, "--json"]);
    expect(result.code, result.stderr).toBe(0);
    const html = readFileSync(path, "utf8");
    expect(html).toMatch(/^<!doctype html>/);
    expect(html).not.toMatch(/<script|<link|https?:\/\/(?!www\.w3\.org\/2000\/svg)/);
    expect(statSync(path).mode & 0o777).toBe(0o600);
    const report = JSON.parse(result.stdout.toString()) as { rounds: unknown[] };
    expect(html.match(/<rect class="bar"/g)?.length).toBe(report.rounds.length + 1);
  });

  it.skipIf(!hasChromium)("renders in headless Chromium with the rounds charted", { timeout: 120_000 }, async () => {
    const path = join(scratch.dir, "browser.html");
    const result = await run(["demo", "--size", "16M", "--dirty-rate", "8M/s", "--report", path, "--json"]);
    expect(result.code, result.stderr).toBe(0);
    const rounds = (JSON.parse(result.stdout.toString()) as { rounds: unknown[] }).rounds.length;
    const { chromium } = await import("playwright-core");
    const browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
      ],
    });
    try {
      const page = await browser.newPage({ viewport: { width: 1180, height: 560 } });
      const requests: string[] = [];
      page.on("request", (request) => requests.push(request.url()));
      await page.goto(pathToFileURL(path).href);
      expect(requests).toEqual([pathToFileURL(path).href]);
      expect(await page.locator("svg.chart").count()).toBe(4);
      const box = await page.locator("#chart-bytes").boundingBox();
      expect(box!.width).toBeGreaterThan(200);
      expect(await page.locator("#chart-bytes rect.bar").count()).toBe(rounds + 1);
      expect(await page.locator("#chart-dirty polyline.line").count()).toBe(1);
      expect(await page.locator("#chart-dirty line.rule").count()).toBe(1);
      expect(await page.locator("#chart-downtime line.rule").count()).toBe(1);
      expect(await page.locator("#summary th", { hasText: "downtime (measured)" }).count()).toBe(1);
      expect(await page.locator("#rounds tbody tr").count()).toBe(rounds);
      if (process.env["MIGSTREAM_UPDATE_SCREENSHOT"] === "1") await page.screenshot({ path: join(ROOT, "docs", "img", "report.png") });
    } finally {
      await browser.close();
    }
  });
});
