// Smoke run of the built package under another runtime (Deno, Bun): the README's TypeScript
// examples, a CLI round trip and the stream cancellation (streams.mjs). Run by .ci/run with
// Node as the driver: `node test/smoke/run.mjs deno /path/to/deno` (or `bun /path/to/bun`).
// The full test suite runs on Node only; this checks what users of those runtimes meet first.
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const [kind, binary] = process.argv.slice(2);
const commands = {
  deno: (file) => [binary, ["run", "--allow-all", "--quiet", file]],
  bun: (file) => [binary, [file]],
};
if (!commands[kind] || !binary) {
  console.error("usage: node test/smoke/run.mjs deno|bun <binary>");
  process.exit(1);
}
const root = fileURLToPath(new URL("../../", import.meta.url));
const work = mkdtempSync(join(tmpdir(), `migstream-smoke-${kind}-`));
const env = { ...process.env, DENO_NO_UPDATE_CHECK: "1", DENO_NO_PROMPT: "1", NO_COLOR: "1", NO_PROGRESS: "1" };

/** Runs a script under the runtime; returns stdout, or exits with what went wrong. */
function run(what, file, args = [], expectStatus = 0) {
  const [command, prefix] = commands[kind](file);
  const result = spawnSync(command, [...prefix, ...args], { cwd: root, env, encoding: "utf8", timeout: 120_000 });
  if (result.status !== expectStatus) {
    console.error(`FAIL ${kind} ${what}: exit ${result.status ?? result.signal}, expected ${expectStatus}\n${result.stdout}\n${result.stderr}`);
    process.exit(1);
  }
  return result.stdout;
}

try {
  const version = spawnSync(binary, ["--version"], { encoding: "utf8", env }).stdout.split("\n")[0];
  console.log(`${kind} ${version}`);

  // 1. The stream cancellation.
  process.stdout.write(run("streams", join(root, "test/smoke/streams.mjs")));

  // 1b. The worker pool on this runtime's workers.
  process.stdout.write(run("worker pool", join(root, "test/smoke/pool.mjs")));

  // 2. The README's TypeScript examples, importing the built entries by path.
  const entries = { migstream: "dist/index.js", "migstream/node": "dist/node/index.js" };
  const resolve = (_, name) => `from "${pathToFileURL(join(root, entries[name])).href}"`;
  const examples = [...readFileSync(join(root, "README.md"), "utf8").matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]);
  if (examples.length < 2) throw new Error("README examples not found");
  examples.forEach((code, i) => {
    const file = join(work, `example-${i}.ts`);
    writeFileSync(file, code.replaceAll(/from "(migstream(?:\/node)?)"/g, resolve));
    const out = run(`README example ${i}`, file);
    if (out.trim() === "" || /false/.test(out)) throw new Error(`README example ${i} printed: ${out}`);
    console.log(`ok  README example ${i}: ${out.trim().replaceAll("\n", " | ")}`);
  });

  // 3. The CLI: encode, inspect, diff + apply, decode, verify of a truncated stream.
  const cli = join(root, "dist/cli/main.js");
  const state = new Uint8Array(3 << 20);
  // Pages of three kinds: zero, repetitive and noisy (raw).
  for (let i = 0, x = 1; i < state.length; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    const kind = (i >> 12) % 3;
    state[i] = kind === 0 ? 0 : kind === 1 ? i & 0x0f : x >>> 24;
  }
  const next = state.slice();
  next.fill(9, 100_000, 100_100);
  const at = (name) => join(work, name);
  writeFileSync(at("a.state"), state);
  writeFileSync(at("b.state"), next);
  run("cli encode", cli, ["encode", at("a.state"), "-o", at("a.mig")]);
  if (!/valid\s+yes/.test(run("cli inspect", cli, ["inspect", at("a.mig")]))) throw new Error("inspect did not say valid");
  run("cli diff", cli, ["diff", at("a.state"), at("b.state"), "-o", at("ab.mig")]);
  run("cli apply", cli, ["apply", at("a.state"), at("ab.mig"), "-o", at("b2.state")]);
  run("cli decode", cli, ["decode", at("a.mig"), "-o", at("a2.state")]);
  if (!readFileSync(at("a2.state")).equals(readFileSync(at("a.state")))) throw new Error("decode round trip differs");
  if (!readFileSync(at("b2.state")).equals(readFileSync(at("b.state")))) throw new Error("apply result differs");
  const full = readFileSync(at("a.mig"));
  writeFileSync(at("cut.mig"), full.subarray(0, full.length - 20));
  run("cli verify (truncated: exit 2)", cli, ["verify", at("cut.mig")], 2);
  console.log("ok  CLI encode, inspect, diff, apply, decode round trip; truncated stream exits 2");
  console.log(`${kind} smoke: all checks passed`);
} catch (error) {
  console.error(`FAIL ${kind}: ${error.message}`);
  process.exitCode = 1;
} finally {
  rmSync(work, { recursive: true, force: true });
}
