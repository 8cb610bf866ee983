// The README's TypeScript examples run as written (against the built package), so the first
// thing a new user copies keeps working.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const root = fileURLToPath(new URL("..", import.meta.url));
const blocks = [...readFileSync(`${root}README.md`, "utf8").matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]!);

describe("README examples", () => {
  it("has examples", () => expect(blocks.length).toBeGreaterThanOrEqual(2));

  it.each(blocks.map((code, i) => [i, code] as const))("example %i runs", (_i, code) => {
    // Inside the project, so `migstream` resolves through the package's own exports.
    const dir = mkdtempSync(`${root}.readme-`);
    try {
      writeFileSync(`${dir}/example.mts`, code);
      const out = execFileSync(process.execPath, ["--import", "tsx", `${dir}/example.mts`], { cwd: root, encoding: "utf8" });
      expect(out).not.toMatch(/false/);
      expect(out.trim().length).toBeGreaterThan(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
