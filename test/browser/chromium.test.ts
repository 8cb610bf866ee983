// The library in a real browser: Debian's Chromium driven by playwright-core (no browser
// download: the system binary). The `migstream` entry is bundled with esbuild exactly as an
// application would import it, served from a local HTTP server on 127.0.0.1, and exercised on
// the main thread and in a module worker, with no CSP, with a strict CSP that allows Wasm
// compilation ('wasm-unsafe-eval'), and with one that does not (where it must fail).
// `.ci/run` installs chromium; elsewhere the suite is skipped with a message when it is absent.
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { type Server, createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { build } from "esbuild";
import { type BrowserContext, chromium } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ROOT, ensureBuilt } from "../cli/helpers.js";

const CHROMIUM = process.env.MIGSTREAM_CHROMIUM ?? "/usr/bin/chromium";
const present = existsSync(CHROMIUM);
// CI installs chromium and sets MIGSTREAM_REQUIRE_BROWSER, so there a missing browser fails
// instead of skipping; locally, the suite is skipped with this message.
const required = process.env.MIGSTREAM_REQUIRE_BROWSER === "1";
if (!present) {
  console.warn(`browser test skipped: no Chromium at ${CHROMIUM} (apt-get install chromium, or set MIGSTREAM_CHROMIUM)`);
}

describe.runIf(!present && required)("in Chromium (required by MIGSTREAM_REQUIRE_BROWSER=1)", () => {
  it("finds the browser", () => expect.fail(`no Chromium at ${CHROMIUM}`));
});

/** The Content-Security-Policy each path prefix is served with. */
const POLICIES: Record<string, string | undefined> = {
  plain: undefined,
  strict: "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'",
  "no-wasm": "default-src 'self'; script-src 'self'",
  // Cross-origin isolated (COOP + COEP below): SharedArrayBuffer, so the worker pool runs.
  isolated: undefined,
};

interface SuiteResult {
  where: string;
  error?: string;
  roundTrip?: boolean;
  streamBytes?: number;
  delta?: { ok: boolean; bytes: number };
  incremental?: { chunks: number; ok: boolean };
  corrupt?: { refused: boolean; code?: string; recordIndex?: number };
  throughput?: { bytes: number; encodeMBps: number; decodeMBps: number };
}

interface PageResults {
  userAgent: string;
  main: SuiteResult;
  worker: SuiteResult;
}

describe.skipIf(!present)("in Chromium", () => {
  let server: Server;
  let origin: string;
  let context: BrowserContext;
  let profile: string;

  beforeAll(async () => {
    await ensureBuilt();
    // The package entry as an application bundles it: resolved through package.json `exports`.
    const bundle = await build({
      stdin: { contents: `export * from "migstream";`, resolveDir: ROOT, loader: "js" },
      bundle: true,
      format: "esm",
      platform: "browser",
      target: "es2022",
      minify: true,
      write: false,
      logLevel: "silent",
    });
    const code = bundle.outputFiles[0]!.contents;
    console.log(`browser bundle: ${(code.length / 1024).toFixed(1)} KiB, ${(gzipSync(code).length / 1024).toFixed(1)} KiB gzip`);

    const pageDir = join(ROOT, "test", "browser", "page");
    const files: Record<string, { type: string; body: Uint8Array | string }> = {
      "index.html": { type: "text/html", body: readFileSync(join(pageDir, "index.html")) },
      "main.js": { type: "text/javascript", body: readFileSync(join(pageDir, "main.js")) },
      "worker.js": { type: "text/javascript", body: readFileSync(join(pageDir, "worker.js")) },
      "suite.js": { type: "text/javascript", body: readFileSync(join(pageDir, "suite.js")) },
      "pool.html": { type: "text/html", body: readFileSync(join(pageDir, "pool.html")) },
      "pool.js": { type: "text/javascript", body: readFileSync(join(pageDir, "pool.js")) },
      "migstream.js": { type: "text/javascript", body: code },
    };
    server = createServer((request, response) => {
      if (request.url === "/favicon.ico") {
        response.writeHead(204).end();
        return;
      }
      const [, prefix = "", name = ""] = /^\/([^/]+)\/([^/?]*)/.exec(request.url ?? "") ?? [];
      const file = files[name === "" ? "index.html" : name];
      if (!(prefix in POLICIES) || !file) {
        response.writeHead(404).end();
        return;
      }
      const policy = POLICIES[prefix];
      response.writeHead(200, {
        "content-type": `${file.type}; charset=utf-8`,
        "cache-control": "no-store",
        ...(policy ? { "content-security-policy": policy } : {}),
        ...(prefix === "isolated" ? { "cross-origin-opener-policy": "same-origin", "cross-origin-embedder-policy": "require-corp" } : {}),
      });
      response.end(file.body);
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

    profile = mkdtempSync(join(tmpdir(), "migstream-chromium-"));
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
      timeout: 60_000,
    });
  }, 180_000);

  afterAll(async () => {
    await context?.close();
    await new Promise((resolve) => server?.close(resolve));
    if (profile) rmSync(profile, { recursive: true, force: true });
  });

  /** Loads `page` under `prefix` and returns what it left in `globalThis[key]`. */
  async function load<T>(prefix: keyof typeof POLICIES, file: string, key: string): Promise<{ results: T; errors: string[] }> {
    const page = await context.newPage();
    const errors: string[] = [];
    page.on("pageerror", (error) => errors.push(error.message));
    page.on("console", (message) => {
      if (message.type() === "error") errors.push(message.text());
    });
    try {
      await page.goto(`${origin}/${prefix}/${file}`);
      await page.waitForFunction(() => document.title === "done", undefined, { timeout: 120_000 });
      return { results: (await page.evaluate(`globalThis.${key}`)) as T, errors };
    } finally {
      await page.close();
    }
  }

  async function open(prefix: keyof typeof POLICIES): Promise<{ results: PageResults; errors: string[] }> {
    return load<PageResults>(prefix, "", "migstreamResults");
  }

  function expectWorks(result: SuiteResult): void {
    expect(result.error).toBeUndefined();
    expect(result.roundTrip).toBe(true);
    expect(result.delta?.ok).toBe(true);
    expect(result.delta!.bytes).toBeLessThan(1024);
    expect(result.incremental?.ok).toBe(true);
    expect(result.incremental!.chunks).toBeGreaterThan(1);
    expect(result.corrupt).toMatchObject({ refused: true, code: "EBADMSG" });
    expect(result.throughput!.encodeMBps).toBeGreaterThan(0);
    const { encodeMBps, decodeMBps, bytes } = result.throughput!;
    console.log(`chromium ${result.where}: encode ${encodeMBps} MB/s, decode ${decodeMBps} MB/s (${bytes >> 20} MiB state, best of 3)`);
  }

  it("encodes, decodes, streams and refuses a corrupt stream on the main thread and in a module worker", async () => {
    const { results, errors } = await open("plain");
    console.log(`browser: ${results.userAgent}`);
    expectWorks(results.main);
    expectWorks(results.worker);
    expect(errors).toEqual([]);
  });

  interface PoolResults {
    isolated: boolean;
    pooled?: boolean;
    note?: string;
    notes?: string[];
    identical?: boolean;
    decoded?: boolean;
    error?: string;
  }

  it("runs the worker pool (jobs: 2) on Web Workers in a cross-origin isolated page: the bytes and state of one thread", async () => {
    const { results, errors } = await load<PoolResults>("isolated", "pool.html", "migstreamPool");
    expect(results.error).toBeUndefined();
    expect(results).toMatchObject({ isolated: true, pooled: true, identical: true, decoded: true, notes: [] });
    expect(errors).toEqual([]);
  });

  it("falls back to one thread with a note in a page without cross-origin isolation", async () => {
    const { results, errors } = await load<PoolResults>("plain", "pool.html", "migstreamPool");
    expect(results.error).toBeUndefined();
    expect(results).toMatchObject({ isolated: false, pooled: false, identical: true, decoded: true });
    expect(results.note).toMatch(/cross-origin isolation/);
    expect(results.notes).toHaveLength(2);
    expect(errors).toEqual([]);
  });

  it("works under a strict CSP that allows Wasm compilation: script-src 'self' 'wasm-unsafe-eval'", async () => {
    const { results, errors } = await open("strict");
    expectWorks(results.main);
    expectWorks(results.worker);
    expect(errors).toEqual([]);
  });

  it("fails with a CompileError at the first call under script-src 'self' without 'wasm-unsafe-eval' (documented in the README)", async () => {
    const { results } = await open("no-wasm");
    console.log(`chromium without 'wasm-unsafe-eval': ${results.main.error}`);
    for (const result of [results.main, results.worker]) {
      expect(result.error).toMatch(/^CompileError: .*(Content Security Policy|wasm-unsafe-eval)/);
    }
  });
});
