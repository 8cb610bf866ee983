// The package as users meet it: the built entry points, the self-reference through `exports`,
// the bin, and the browser-safety of the library entry.
import { execFileSync } from "node:child_process";
import { readFileSync, statSync } from "node:fs";
import { dirname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const root = fileURLToPath(new URL("..", import.meta.url));

describe("package", () => {
  it("resolves `migstream` and `migstream/node` from the project root (self-reference)", () => {
    const out = execFileSync(
      process.execPath,
      [
        "--input-type=module",
        "-e",
        `import { xxh3, crc32c, encodeSnapshot, decodeSnapshot, MigrationError } from "migstream";
         import { createDecodeStream } from "migstream/node";
         const state = new TextEncoder().encode("hello migstream");
         const back = decodeSnapshot(encodeSnapshot(state));
         console.log(xxh3(new Uint8Array(0)).toString(16), crc32c(new TextEncoder().encode("123456789")).toString(16),
           new TextDecoder().decode(back), typeof createDecodeStream, new MigrationError("EINVAL", "x").code);`,
      ],
      { cwd: root, encoding: "utf8" },
    );
    expect(out.trim()).toBe("2d06800538d394c2 e3069283 hello migstream function EINVAL");
  });

  it("loads with require() too (no top-level await anywhere in the library)", () => {
    const out = execFileSync(process.execPath, ["-e", `console.log(typeof require("migstream").xxh3)`], { cwd: root, encoding: "utf8" });
    expect(out.trim()).toBe("function");
  });

  it("the library entry imports no node: module (it runs in browsers and workers)", () => {
    const seen = new Set<string>();
    const visit = (file: string): void => {
      if (seen.has(file)) return;
      seen.add(file);
      const source = readFileSync(file, "utf8");
      for (const match of source.matchAll(/from\s+"([^"]+)"/g)) {
        const spec = match[1]!;
        expect(spec.startsWith("node:"), `${file} imports ${spec}`).toBe(false);
        if (spec.startsWith(".")) visit(fileURLToPath(new URL(spec, `file://${file}`)));
      }
    };
    visit(`${root}dist/index.js`);
    expect(seen.size).toBeGreaterThan(10);
  });

  it("the bin runs as npm links it (shebang, executable) and lists every command", () => {
    // Not through `npx migstream`: for the project itself npx installs it as a package into its
    // cache, which runs `prepare` (a whole build, replacing dist/ under the other tests).
    const { bin } = JSON.parse(readFileSync(`${root}package.json`, "utf8")) as { bin: Record<string, string> };
    const cli = join(root, bin.migstream!);
    expect(readFileSync(cli, "utf8").startsWith("#!/usr/bin/env node\n")).toBe(true);
    expect(statSync(cli).mode & 0o111).toBe(0o111);
    const out = execFileSync(cli, ["--help"], { cwd: root, encoding: "utf8" });
    for (const command of ["encode", "decode", "diff", "apply", "inspect", "verify", "demo", "send", "receive"]) expect(out).toContain(command);
  });
});

/** What `npm pack` would put in the tarball (no build: `npm test` built dist/ already). */
function packedFiles(): string[] {
  const out = execFileSync("npm", ["pack", "--dry-run", "--json", "--ignore-scripts"], { cwd: root, encoding: "utf8" });
  const [pack] = JSON.parse(out) as { files: { path: string }[] }[];
  return pack!.files.map((f) => f.path).sort();
}

describe("the packed files", () => {
  const files = packedFiles();
  const shipped = new Set(files);

  it("holds the entry points, their types, the bin and the documents", () => {
    const manifest = JSON.parse(readFileSync(`${root}package.json`, "utf8")) as {
      exports: Record<string, string | Record<string, string>>;
      bin: Record<string, string>;
    };
    const targets = Object.values(manifest.exports).flatMap((t) => (typeof t === "string" ? [t] : Object.values(t)));
    for (const target of [...targets, ...Object.values(manifest.bin)]) expect(shipped, target).toContain(normalize(target));
    for (const doc of ["README.md", "LICENSE", "CHANGELOG.md", "docs/FORMAT.md", "docs/ARCHITECTURE.md", "package.json"]) expect(shipped).toContain(doc);
  });

  it("leaves out source maps, the reference twins, the CLI's types, sources and a second Wasm copy", () => {
    const unwanted = files.filter(
      (f) =>
        f.endsWith(".map") ||
        /(^|\/)reference(\/|\.)/.test(f) ||
        (f.startsWith("dist/cli/") && f.endsWith(".d.ts")) ||
        f.endsWith(".wasm") ||
        /^(src|test|bench|assembly|scripts|build|\.ci)\//.test(f),
    );
    expect(unwanted).toEqual([]);
  });

  it("has no comment pointing at a source map, and every relative import resolves inside the package", () => {
    let imports = 0;
    for (const file of files.filter((f) => f.endsWith(".js") || f.endsWith(".d.ts"))) {
      const source = readFileSync(join(root, file), "utf8");
      expect(source, file).not.toContain("sourceMappingURL");
      for (const match of source.matchAll(/(?:from|import)\s*\(?\s*"(\.{1,2}\/[^"]+)"/g)) {
        let target = join(dirname(file), match[1]!);
        if (file.endsWith(".d.ts")) target = target.replace(/\.js$/, ".d.ts");
        expect(shipped.has(target), `${file} imports ${match[1]}`).toBe(true);
        imports++;
      }
    }
    expect(imports).toBeGreaterThan(100);
  });
});
