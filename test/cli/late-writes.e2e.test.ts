// A command checks, flushes and renames its output only once every write ended (Output.written).
// Here every fs.write callback comes 20 ms late (a preload standing for a slow disk, should any
// output be written off the main thread); every command that reads its own output back must
// still see all of it.
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { makeState, ROOT, run, tempFiles, useTestDir } from "./helpers.js";

const scratch = useTestDir();
const { at } = scratch;
const late = { NODE_OPTIONS: `--import ${join(ROOT, "test", "fixtures", "preload", "slow-writes.mjs")}` };
const QEMU_STREAM = join(ROOT, "test", "fixtures", "qemu", "xbzrle-16m.mig");

beforeAll(() => {
  writeFileSync(at("vm.state"), makeState(6 * 1024 * 1024 + 4096, 21));
});

describe("late write callbacks", () => {
  it("encode verifies the whole output, on one thread and on two", async () => {
    for (const jobs of ["1", "2"]) {
      const out = at(`vm-${jobs}.mig`);
      const result = await run(["encode", at("vm.state"), "-o", out, "--compress", "lz4", "--jobs", jobs], { env: late });
      expect(result.code, result.stderr).toBe(0);
      const back = await run(["decode", out, "-o", at(`vm-${jobs}.back`)]);
      expect(back.code, back.stderr).toBe(0);
      expect(readFileSync(at(`vm-${jobs}.back`)).equals(readFileSync(at("vm.state")))).toBe(true);
    }
  });

  it("convert to a QEMU stream verifies the whole output", async () => {
    const ours = await run(["convert", QEMU_STREAM, "-o", at("from-qemu.mig")]);
    expect(ours.code, ours.stderr).toBe(0);
    const result = await run(["convert", at("from-qemu.mig"), "-o", at("back.qemu")], { env: late });
    expect(result.code, result.stderr).toBe(0);
    const check = await run(["verify", at("back.qemu")]);
    expect(check.code, check.stderr).toBe(0);
    expect(tempFiles(scratch.dir)).toEqual([]);
  });
});
