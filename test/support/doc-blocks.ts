// Documentation that runs: the code blocks of a Markdown file, classified so that every one is
// either executed by the tests or says why it is not code. CONTRIBUTING.md ("Docs that run")
// is the user's side of these rules:
//
//   ```ts        a program: run with tsx; each `console.log(...)` line that ends in `// → text`
//                must print that text (numbers normalised, see `normalise`)
//   ```console   a shell transcript: `$ command` lines run in order in one scratch folder with
//                `migstream` on PATH; the lines after a command are its output (stdout and
//                stderr together) until the next `$`. Every command must exit 0 (show a failure
//                with `; echo "exit $?"`). The transcript makes its own input files.
//   ```text      not code (a header value, a file tree): nothing to run
//
// Any other block must be preceded by `<!-- not run: <why> -->`; a block of no known kind fails.
import { spawnSync } from "node:child_process";
import { chmodSync, mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = fileURLToPath(new URL("../../", import.meta.url));

export interface DocBlock {
  /** The fence's language tag ("" when none). */
  lang: string;
  code: string;
  /** 1-based line of the opening fence, for messages. */
  line: number;
  /** The reason given in a `<!-- not run: ... -->` comment right before the block. */
  notRun?: string;
}

export function docBlocks(markdown: string): DocBlock[] {
  const blocks: DocBlock[] = [];
  const lines = markdown.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const open = /^(\s*)```(\S*)\s*$/.exec(lines[i]!);
    if (!open) continue;
    const indent = open[1]!.length;
    const start = i;
    const body: string[] = [];
    for (i++; i < lines.length && !/^\s*```\s*$/.test(lines[i]!); i++) body.push(lines[i]!.slice(indent));
    let before = start - 1;
    while (before >= 0 && lines[before]!.trim() === "") before--;
    const note = before >= 0 ? /^\s*<!--\s*not run:\s*(.*?)\s*-->\s*$/.exec(lines[before]!) : null;
    blocks.push({ lang: open[2]!, code: `${body.join("\n")}\n`, line: start + 1, ...(note ? { notRun: note[1]! } : {}) });
  }
  return blocks;
}

/**
 * What may differ between two runs of the same example: numbers (sizes, times, digests, ports,
 * counts), the unit a size or a time is shown in, column padding, how many times a row that
 * normalises the same repeats (a migration takes 1 or 3 pre-copy rounds), and what a live
 * migration's timing decides: the state its workload stopped in (STOP, or STOP_COPY when a
 * write came during the stop-copy) and why pre-copy ended (a stalled round makes no progress).
 */
export function normalise(text: string): string[] {
  const out: string[] = [];
  for (const raw of text.split("\n")) {
    const line = raw
      .replace(/stopped at [A-Z_]+/g, "stopped at <state>")
      .replace(/pre-copy ended: [a-z-]+/g, "pre-copy ended: <reason>")
      .replace(/0x[0-9a-f]+/gi, "0x#")
      .replace(/\d+(?:\.\d+)?/g, "#")
      .replace(/# (?:B|KiB|MiB|GiB|TiB)\b/g, "# <bytes>")
      .replace(/# (?:ms|s)\b/g, "# <time>")
      .replace(/\s+/g, " ")
      .trim();
    if (line === "" || line === out[out.length - 1]) continue;
    out.push(line);
  }
  return out;
}

/** A folder holding a `migstream` shim, as `npm link` would put one on PATH; no build happens on use. */
export function cliOnPath(): string {
  const bin = mkdtempSync(join(tmpdir(), "migstream-bin-"));
  const shim = join(bin, "migstream");
  writeFileSync(shim, `#!/bin/sh\nexec "${process.execPath}" "${join(ROOT, "dist", "cli", "main.js")}" "$@"\n`);
  chmodSync(shim, 0o755);
  return bin;
}

export interface Step {
  command: string;
  expected: string;
}

/** The commands of a transcript with the output shown after each (`\` continues a command). */
export function transcriptSteps(code: string): Step[] {
  const steps: Step[] = [];
  let continuing = false;
  for (const line of code.split("\n")) {
    const last = steps[steps.length - 1];
    if (continuing && last) {
      last.command += `\n${line}`;
      continuing = line.endsWith("\\");
    } else if (line.startsWith("$ ")) {
      steps.push({ command: line.slice(2), expected: "" });
      continuing = line.endsWith("\\");
    } else if (last) {
      last.expected += `${line}\n`;
    } else if (line.trim() !== "") {
      throw new Error(`transcript output before any "$ " command: ${line}`);
    }
  }
  return steps;
}

export interface StepResult extends Step {
  status: number | null;
  output: string;
}

/** Runs each step with bash in `dir`, `migstream` first on PATH; stops at the first failing command. */
export function runTranscript(code: string, dir: string, bin: string, timeoutMs = 180_000): StepResult[] {
  mkdirSync(dir, { recursive: true });
  const results: StepResult[] = [];
  for (const step of transcriptSteps(code)) {
    const run = spawnSync("bash", ["-o", "pipefail", "-c", `{ ${step.command}\n} 2>&1`], {
      cwd: dir,
      encoding: "utf8",
      timeout: timeoutMs,
      env: { ...process.env, PATH: `${bin}:${process.env.PATH ?? ""}`, NO_PROGRESS: "1", NO_COLOR: "1" },
    });
    results.push({ ...step, status: run.status, output: `${run.stdout ?? ""}${run.error ? String(run.error) : ""}` });
    if (run.status !== 0) break;
  }
  return results;
}

/** The `// → text` expectations of a TypeScript example, in order. */
export function expectedLogs(code: string): string[] {
  return code
    .split("\n")
    .filter((line) => line.includes("console.log("))
    .map((line) => {
      const arrow = /\/\/\s*→\s*(.*)$/.exec(line);
      if (!arrow) throw new Error(`console.log without a "// → <output>" comment: ${line.trim()}`);
      return arrow[1]!;
    });
}
