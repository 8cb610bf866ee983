// The README runs as written: every TypeScript example (against the built package) and every
// command-line transcript (with `migstream` on PATH, outputs compared with numbers normalised),
// so that what a new user copies keeps working. The rules are in test/support/doc-blocks.ts and
// CONTRIBUTING.md ("Docs that run").
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ensureBuilt } from "./cli/helpers.js";
import { cliOnPath, docBlocks, expectedLogs, normalise, ROOT, runTranscript } from "./support/doc-blocks.js";

const blocks = docBlocks(readFileSync(join(ROOT, "README.md"), "utf8"));
const bin = cliOnPath();
beforeAll(ensureBuilt);
afterAll(() => rmSync(bin, { recursive: true, force: true }));

describe("README code blocks", () => {
  it("every block is a kind the tests know, or says why it is not run", () => {
    const unknown = blocks.filter((b) => b.notRun === undefined && !["ts", "console", "text"].includes(b.lang));
    expect(
      unknown.map((b) => `line ${b.line}: \`\`\`${b.lang}`),
      "mark it ts, console or text, or put <!-- not run: why --> before it",
    ).toEqual([]);
    for (const b of blocks) if (b.notRun !== undefined) expect(b.notRun.length, `line ${b.line}: say why`).toBeGreaterThan(10);
    expect(blocks.filter((b) => b.lang === "ts").length).toBeGreaterThanOrEqual(2);
    expect(blocks.filter((b) => b.lang === "console").length).toBeGreaterThanOrEqual(2);
  });

  const programs = blocks.filter((b) => b.lang === "ts" && b.notRun === undefined);
  it.each(programs.map((b) => [b.line, b] as const))("the example at line %i prints what its comments say", (_line, block) => {
    // Inside the project, so `migstream` resolves through the package's own exports.
    const dir = mkdtempSync(`${ROOT}.readme-`);
    try {
      writeFileSync(`${dir}/example.mts`, block.code);
      const out = execFileSync(process.execPath, ["--import", "tsx", `${dir}/example.mts`], { cwd: ROOT, encoding: "utf8" });
      expect(normalise(out)).toEqual(expectedLogs(block.code).flatMap((l) => normalise(l)));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  const transcripts = blocks.filter((b) => b.lang === "console" && b.notRun === undefined);
  it.each(transcripts.map((b) => [b.line, b] as const))("the transcript at line %i gives the output shown", (_line, block) => {
    const dir = mkdtempSync(join(tmpdir(), "migstream-readme-"));
    try {
      for (const step of runTranscript(block.code, dir, bin)) {
        expect(step.status, `$ ${step.command}\n${step.output}`).toBe(0);
        expect(normalise(step.output), `$ ${step.command}`).toEqual(normalise(step.expected));
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
