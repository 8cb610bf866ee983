// Packs the package as it would be published (from the dist/ already built: no prepare, so no
// second build) and checks the tarball with publint (strict) and Are the Types Wrong. The
// package is ESM-only, so attw runs with the esm-only profile: node10 and CJS-from-node16
// resolution are expected to fail for it and are not errors.
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const dir = mkdtempSync(join(tmpdir(), "migstream-pack-"));
const run = (command, args) => execFileSync(command, args, { stdio: ["ignore", "inherit", "inherit"] });
try {
  const out = execFileSync("npm", ["pack", "--ignore-scripts", "--json", "--pack-destination", dir], { encoding: "utf8" });
  const tarball = join(dir, JSON.parse(out)[0].filename);
  run("npx", ["--no-install", "publint", "run", tarball, "--strict"]);
  run("npx", ["--no-install", "attw", tarball, "--profile", "esm-only", "--format", "table"]);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
