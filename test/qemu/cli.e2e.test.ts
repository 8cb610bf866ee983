// The CLI on QEMU streams without QEMU: the golden streams in test/fixtures/qemu/, the output
// rules (temporary name, -f, stdout, nothing left behind on failure), exit codes and --json.
import { copyFileSync, existsSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { run, tempFiles, useTestDir } from "../cli/helpers.js";
import { patternBytes } from "./driver.js";

const FIXTURE = new URL("../fixtures/qemu/pc-16m.mig", import.meta.url).pathname;
const XBZRLE = new URL("../fixtures/qemu/xbzrle-16m.mig", import.meta.url).pathname;

describe("CLI on QEMU streams (golden files)", () => {
  const scratch = useTestDir();
  const d = scratch.at;

  it("decode writes the RAM, refuses an existing output without -f, replaces it with -f", async () => {
    const first = await run(["decode", FIXTURE, "-o", d("a.ram")]);
    expect(first.code, first.stderr).toBe(0);
    const ram = readFileSync(d("a.ram"));
    expect(ram.length).toBe(16 * 2 ** 20 + 128 * 1024 + 256 * 1024 + 128 * 1024 + 4096 + 4096);
    expect(ram.subarray(0x100000, 0x100000 + 12288).equals(Buffer.from(patternBytes(12288, 19)))).toBe(true);
    expect(statSync(d("a.ram")).mode & 0o777).toBe(0o600);
    const again = await run(["decode", FIXTURE, "-o", d("a.ram")]);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/EEXIST|exists/);
    expect((await run(["decode", FIXTURE, "-o", d("a.ram"), "-f"])).code).toBe(0);
    expect(tempFiles(scratch.dir)).toEqual([]);
  });

  it("decode to stdout gives the same bytes; --region a block", async () => {
    const out = await run(["decode", FIXTURE, "-o", "-", "--region", "pc.bios"]);
    expect(out.code, out.stderr).toBe(0);
    expect(out.stdout.length).toBe(256 * 1024);
    await run(["decode", FIXTURE, "-o", d("all.ram")]);
    const all = readFileSync(d("all.ram"));
    const bios = 16 * 2 ** 20 + 128 * 1024;
    expect(out.stdout.equals(all.subarray(bios, bios + 256 * 1024))).toBe(true);
    const missing = await run(["decode", FIXTURE, "-o", d("none.ram"), "--region", "nope", "--json"]);
    expect(missing.code).toBe(1);
    expect(JSON.parse(missing.stdout.toString()).error.message).toMatch(/no RAM block "nope"/);
    expect(existsSync(d("none.ram"))).toBe(false);
  });

  it("stdin: recognised by its magic too (inspect, decode), and a migstream stream on stdin still is one", async () => {
    const inspect = await run(["inspect", "-", "--json"], { input: readFileSync(XBZRLE) });
    expect(inspect.code, inspect.stderr).toBe(0);
    expect(JSON.parse(inspect.stdout.toString())).toMatchObject({ format: "qemu", valid: true, pages: { xbzrle: expect.any(Number) } });
    const piped = await run(["decode", "-", "-o", d("piped.ram")], { input: readFileSync(XBZRLE) });
    expect(piped.code, piped.stderr).toBe(0);
    await run(["decode", XBZRLE, "-o", d("file.ram")]);
    expect(readFileSync(d("piped.ram")).equals(readFileSync(d("file.ram")))).toBe(true);
    await run(["convert", XBZRLE, "-o", d("s.mig")]);
    const mig = await run(["verify", "-", "--json"], { input: readFileSync(d("s.mig")) });
    expect(mig.code, mig.stderr).toBe(0);
    expect(JSON.parse(mig.stdout.toString()).format).toBeUndefined();
  });

  it("a damaged stream: decode exits 2 and leaves nothing; inspect --json reports it invalid with the offset", async () => {
    const bad = Buffer.from(readFileSync(FIXTURE));
    bad[bad.length - 200]! ^= 0xff; // inside the VM description: no longer JSON
    writeFileSync(d("bad.qemu"), bad);
    const cut = readFileSync(FIXTURE).subarray(0, 100_000);
    writeFileSync(d("cut.qemu"), cut);
    const decode = await run(["decode", d("cut.qemu"), "-o", d("cut.ram")]);
    expect(decode.code).toBe(2);
    expect(decode.stderr).toMatch(/ENODATA/);
    expect(existsSync(d("cut.ram"))).toBe(false);
    expect(tempFiles(scratch.dir)).toEqual([]);
    const inspect = await run(["inspect", d("bad.qemu"), "--json"]);
    expect(inspect.code).toBe(2);
    const doc = JSON.parse(inspect.stdout.toString());
    expect(doc).toMatchObject({ command: "inspect", format: "qemu", valid: false, error: { code: "EBADMSG", exitCode: 2 } });
    expect(doc.error.byteOffset).toBeGreaterThan(0);
    expect((await run(["verify", d("cut.qemu")])).code).toBe(2);
  });

  it("convert round trip without QEMU: the same RAM and the same device state bytes", async () => {
    expect((await run(["convert", XBZRLE, "-o", d("x.mig")])).code).toBe(0);
    expect((await run(["verify", d("x.mig")])).code).toBe(0);
    const back = await run(["convert", d("x.mig"), "-o", d("x.qemu"), "--json"]);
    expect(back.code, back.stderr).toBe(0);
    expect(JSON.parse(back.stdout.toString())).toMatchObject({ command: "convert", from: "migstream", to: "qemu" });
    await run(["decode", XBZRLE, "-o", d("x1.ram")]);
    await run(["decode", d("x.qemu"), "-o", d("x2.ram")]);
    expect(readFileSync(d("x1.ram")).equals(readFileSync(d("x2.ram")))).toBe(true);
    // Everything after the RAM sections is the original's, byte for byte.
    const original = readFileSync(XBZRLE);
    const written = readFileSync(d("x.qemu"));
    const tail = 100_000; // the VM description (~99 KB) and the device sections before it
    expect(written.subarray(written.length - tail).equals(original.subarray(original.length - tail))).toBe(true);
  });

  it("encode --template refuses a snapshot of another size (exit 3) and writes nothing", async () => {
    writeFileSync(d("small.ram"), Buffer.alloc(4096));
    const r = await run(["encode", d("small.ram"), "--template", FIXTURE, "-o", d("t.qemu")]);
    expect(r.code).toBe(3);
    expect(existsSync(d("t.qemu"))).toBe(false);
    copyFileSync(FIXTURE, d("same.qemu"));
    const same = await run(["decode", d("same.qemu"), "-o", d("same.qemu"), "-f"]);
    expect(same.code).toBe(1);
  });
});
