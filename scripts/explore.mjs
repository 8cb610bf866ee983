#!/usr/bin/env node
// npm run test:explore [-- --rounds N] [-- files...]
//
// Runs the property tests with fresh random seeds (MIGSTREAM_EXPLORE=1, see
// test/support/fast-check-seed.ts), round after round, and stops at the first failure. Every
// round draws new seeds, so N rounds try N times the cases CI tries. At the end it prints how many
// cases each property went through and, for a failure, the seed and path to pin it with.
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const args = process.argv.slice(2);
let rounds = 10;
const files = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--rounds") {
    rounds = Number(args[++i]);
    if (!Number.isInteger(rounds) || rounds < 1) throw new Error("--rounds takes a whole number of at least 1");
  } else files.push(args[i]);
}

/** Test files that hold a property: the ones fast-check's seed matters to. */
function propertyFiles(dir) {
  const out = [];
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) out.push(...propertyFiles(path));
    else if (name.endsWith(".test.ts") && /\b(test|it)\.prop\(|fc\.(assert|check)\(/.test(readFileSync(path, "utf8"))) out.push(relative(root, path));
  }
  return out;
}

const targets = files.length > 0 ? files : propertyFiles(join(root, "test"));
const scratch = mkdtempSync(join(tmpdir(), "migstream-explore-"));
const log = join(scratch, "runs.jsonl");
let status = 0;
let done = 0;
try {
  for (let round = 1; round <= rounds; round++) {
    console.log(`== explore round ${round}/${rounds}: ${targets.length} files`);
    const run = spawnSync(process.execPath, [join(root, "node_modules/vitest/vitest.mjs"), "run", "--maxWorkers=1", ...targets], {
      cwd: root,
      stdio: "inherit",
      env: { ...process.env, MIGSTREAM_EXPLORE: "1", MIGSTREAM_EXPLORE_LOG: log },
    });
    done = round;
    if (run.status !== 0) {
      status = run.status ?? 1;
      break;
    }
  }
  const totals = new Map();
  const failures = [];
  let lines = [];
  try {
    lines = readFileSync(log, "utf8")
      .trim()
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l));
  } catch {
    // No property ran (a filter matched nothing): the table below is empty.
  }
  for (const line of lines) {
    // @fast-check/vitest runs every plain test() as a one-run property: not a property.
    if (line.runs === 1 && !line.failed) continue;
    const key = `${relative(root, line.file)} > ${line.test.replace(/ \(with seed=-?\d+\)$/, "")}`;
    totals.set(key, (totals.get(key) ?? 0) + line.runs);
    if (line.failed) failures.push(line);
  }
  console.log(`\n== cases per property over ${done} round(s)`);
  for (const [key, runs] of [...totals].sort()) console.log(`${String(runs).padStart(8)}  ${key}`);
  const all = [...totals.values()].reduce((a, b) => a + b, 0);
  console.log(`${String(all).padStart(8)}  in all, ${totals.size} properties`);
  for (const f of failures) {
    console.log(`\nFAILED ${relative(root, f.file)} > ${f.test}\n  seed ${f.seed}, path "${f.path}"`);
    console.log(`  replay: add { seed: ${f.seed}, path: "${f.path}", endOnFailure: true } to that property's parameters,`);
    console.log("  then write the shrunk counterexample down as a plain test (CONTRIBUTING.md, Property tests).");
  }
  if (status !== 0 && failures.length === 0) console.log("\nFAILED: see the vitest output above (the failure was not in a property)");
} finally {
  rmSync(scratch, { recursive: true, force: true });
}
process.exit(status);
