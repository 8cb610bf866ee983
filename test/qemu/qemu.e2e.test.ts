// Against QEMU 7.2 itself: a tiny TCG guest migrated to a file, read by the real CLI, and
// streams migstream wrote loaded back by QEMU with -incoming and compared with pmemsave. Skipped
// with a message when qemu-system-x86_64 is absent; CI sets MIGSTREAM_REQUIRE_QEMU=1, where
// its absence fails instead.
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { run, useTestDir } from "../cli/helpers.js";
import { loadVm, qemuTestsEnabled } from "./driver.js";
import { BLOB, BLOB_ADDR, migrateDirtyingGuest, migratePausedGuest } from "./make-fixtures.js";

const enabled = qemuTestsEnabled();
const MIB = 2 ** 20;

/** Guest RAM a loaded target holds: below the VGA hole, and from 1 MiB to the end of RAM. */
async function loadedRam(dir: string, stream: string, name: string, machine: "pc" | "q35" = "pc"): Promise<{ low: Buffer; high: Buffer }> {
  const vm = await loadVm({ dir, memMiB: 16, machine }, stream, name);
  try {
    await vm.pmemsave(0, 0xa0000, join(dir, `${name}.low`));
    await vm.pmemsave(0x100000, 15 * MIB, join(dir, `${name}.high`));
    return { low: readFileSync(join(dir, `${name}.low`)), high: readFileSync(join(dir, `${name}.high`)) };
  } finally {
    await vm.quit();
  }
}

/** The same two ranges of a decoded pc.ram (the first block of a decode). */
function ramRanges(ram: Buffer): { low: Buffer; high: Buffer } {
  return { low: ram.subarray(0, 0xa0000), high: ram.subarray(0x100000, 16 * MIB) };
}

describe.skipIf(!enabled)("against QEMU 7.2", () => {
  const scratch = useTestDir();
  const d = scratch.at;

  describe("a paused pc guest with a known blob", () => {
    beforeAll(async () => {
      await migratePausedGuest(scratch.dir, d("vm.qemu"));
    }, 120_000);

    it("inspect --json: format, machine, blocks, pages, sections, valid", async () => {
      const r = await run(["inspect", d("vm.qemu"), "--json"]);
      expect(r.code, r.stderr).toBe(0);
      const doc = JSON.parse(r.stdout.toString());
      expect(doc).toMatchObject({ command: "inspect", format: "qemu", machine: "pc-i440fx-7.2", valid: true, iterations: expect.any(Number) });
      expect(doc.ramBlocks[0]).toEqual({ name: "pc.ram", size: 16 * MIB });
      expect(doc.pages.normal + doc.pages.zero).toBeGreaterThan(4096);
      expect(doc.sections[0]).toMatchObject({ name: "ram", instance: 0, version: 4 });
      expect(doc.sections.length).toBeGreaterThan(20);
    });

    it("verify, and decode equal to the loaded blob and to QEMU's own pmemsave", async () => {
      expect((await run(["verify", d("vm.qemu")])).code).toBe(0);
      const r = await run(["decode", d("vm.qemu"), "-o", d("vm.ram")]);
      expect(r.code, r.stderr).toBe(0);
      const ram = readFileSync(d("vm.ram"));
      expect(ram.subarray(BLOB_ADDR, BLOB_ADDR + BLOB.length).equals(BLOB)).toBe(true);
      const loaded = await loadedRam(scratch.dir, d("vm.qemu"), "orig");
      expect(ramRanges(ram).low.equals(loaded.low)).toBe(true);
      expect(ramRanges(ram).high.equals(loaded.high)).toBe(true);
      const one = await run(["decode", d("vm.qemu"), "-o", d("rsdp.ram"), "--region", "/rom@etc/acpi/rsdp"]);
      expect(one.code, one.stderr).toBe(0);
      expect(readFileSync(d("rsdp.ram")).length).toBe(4096);
    }, 120_000);

    it("convert to migstream and back: QEMU loads it with the same guest memory", async () => {
      expect((await run(["convert", d("vm.qemu"), "-o", d("vm.mig")])).code).toBe(0);
      const inspect = JSON.parse((await run(["inspect", d("vm.mig"), "--json"])).stdout.toString());
      expect(inspect.header.regions[0]).toEqual({ name: "pc.ram", size: 16 * MIB });
      const back = await run(["convert", d("vm.mig"), "-o", d("back.qemu")]);
      expect(back.code, back.stderr).toBe(0);
      const loaded = await loadedRam(scratch.dir, d("back.qemu"), "back");
      const original = await loadedRam(scratch.dir, d("vm.qemu"), "orig2");
      expect(loaded.low.equals(original.low)).toBe(true);
      expect(loaded.high.equals(original.high)).toBe(true);
    }, 120_000);

    it("encode --template: edited guest memory, loaded by QEMU", async () => {
      await run(["decode", d("vm.qemu"), "-o", d("edit.ram")]);
      const ram = readFileSync(d("edit.ram"));
      const marker = Buffer.from("edited by migstream encode --template");
      marker.copy(ram, 0x200000);
      writeFileSync(d("edit.ram"), ram);
      const r = await run(["encode", d("edit.ram"), "--template", d("vm.qemu"), "-o", d("edit.qemu")]);
      expect(r.code, r.stderr).toBe(0);
      const loaded = await loadedRam(scratch.dir, d("edit.qemu"), "edit");
      expect(loaded.high.subarray(0x100000, 0x100000 + marker.length).equals(marker)).toBe(true);
      expect(ramRanges(ram).high.equals(loaded.high)).toBe(true);
      // One block only: the others come from the template.
      const block = Buffer.alloc(16 * MIB);
      marker.copy(block, 0x300000);
      writeFileSync(d("block.ram"), block);
      const one = await run(["encode", d("block.ram"), "--template", d("vm.qemu"), "--region", "pc.ram", "-o", d("block.qemu")]);
      expect(one.code, one.stderr).toBe(0);
      const loadedBlock = await loadedRam(scratch.dir, d("block.qemu"), "block");
      expect(loadedBlock.high.subarray(0x200000, 0x200000 + marker.length).equals(marker)).toBe(true);
    }, 120_000);
  });

  describe("a guest that keeps dirtying memory, migrated with XBZRLE", () => {
    beforeAll(async () => {
      await migrateDirtyingGuest(scratch.dir, d("dirty.qemu"));
      await migratePausedGuest(scratch.dir, d("clean.qemu"));
    }, 240_000);

    it("multi-iteration stream with XBZRLE pages decodes to what QEMU loads", async () => {
      const doc = JSON.parse((await run(["inspect", d("dirty.qemu"), "--json"])).stdout.toString());
      expect(doc.valid).toBe(true);
      expect(doc.pages.xbzrle).toBeGreaterThan(0);
      expect(doc.iterations).toBeGreaterThan(2);
      expect((await run(["decode", d("dirty.qemu"), "-o", d("dirty.ram")])).code).toBe(0);
      const ram = ramRanges(readFileSync(d("dirty.ram")));
      const loaded = await loadedRam(scratch.dir, d("dirty.qemu"), "dirty");
      expect(ram.low.equals(loaded.low)).toBe(true);
      expect(ram.high.equals(loaded.high)).toBe(true);
    }, 120_000);

    it("diff of two QEMU snapshots, applied onto the first: QEMU loads the second's memory", async () => {
      const diff = await run(["diff", d("clean.qemu"), d("dirty.qemu"), "-o", d("c2d.mig")]);
      expect(diff.code, diff.stderr).toBe(0);
      const apply = await run(["apply", d("clean.qemu"), d("c2d.mig"), "-o", d("applied.qemu")]);
      expect(apply.code, apply.stderr).toBe(0);
      await run(["decode", d("dirty.qemu"), "-o", d("dirty2.ram")]);
      const loaded = await loadedRam(scratch.dir, d("applied.qemu"), "applied");
      const want = ramRanges(readFileSync(d("dirty2.ram")));
      expect(loaded.low.equals(want.low)).toBe(true);
      expect(loaded.high.equals(want.high)).toBe(true);
    }, 120_000);
  });

  describe("q35", () => {
    it("a q35 guest: inspect, and convert round trip loaded by QEMU", async () => {
      await migratePausedGuest(scratch.dir, d("q35.qemu"), "q35");
      const doc = JSON.parse((await run(["inspect", d("q35.qemu"), "--json"])).stdout.toString());
      expect(doc.machine).toMatch(/^pc-q35-/);
      expect(doc.valid).toBe(true);
      expect((await run(["convert", d("q35.qemu"), "-o", d("q35.mig")])).code).toBe(0);
      expect((await run(["convert", d("q35.mig"), "-o", d("q35back.qemu")])).code).toBe(0);
      const a = await loadedRam(scratch.dir, d("q35back.qemu"), "q35back", "q35");
      const b = await loadedRam(scratch.dir, d("q35.qemu"), "q35orig", "q35");
      expect(a.high.equals(b.high)).toBe(true);
      expect(a.high.subarray(0, BLOB.length).equals(BLOB)).toBe(true);
    }, 180_000);
  });
});
