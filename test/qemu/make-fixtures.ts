// Regenerates the golden QEMU streams in test/fixtures/qemu/ with the QEMU installed here
// (Debian 12's 7.2): `npx tsx test/qemu/make-fixtures.ts`. The unit tests read these files, so
// they run without QEMU; the e2e tests (test/qemu/*.e2e.test.ts) make fresh ones.
//
//   pc-16m.mig     a paused 16 MiB `pc` VM with 12 KiB of patternBytes(12288, 19) at 1 MiB
//   xbzrle-16m.mig a 16 MiB `pc` VM running dirty-boot.bin, migrated with XBZRLE over several
//                  iterations (it keeps dirtying two pages)
import { createHash } from "node:crypto";
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { loadVm, patternBytes, sleep, startVm } from "./driver.js";

export const FIXTURES = fileURLToPath(new URL("../fixtures/qemu/", import.meta.url));
export const BLOB_ADDR = 0x100000;
export const BLOB = patternBytes(12288, 19);

/**
 * A VM booted from dirty-boot.bin and migrated with XBZRLE until it has iterated a few times.
 * QEMU completes early when a bitmap sync happens to find nothing dirty (the vCPU thread had no
 * turn since the last one): such a run has no XBZRLE page, and is tried again (up to 6 times).
 */
export async function migrateDirtyingGuest(dir: string, out: string, memMiB = 16): Promise<Record<string, unknown>> {
  let info: Record<string, unknown> = {};
  for (let attempt = 0; attempt < 6; attempt++) {
    info = await migrateDirtyingOnce(dir, out, memMiB);
    // "bytes", not "pages": QEMU counts a page that turned out unchanged, which sends nothing.
    if (((info["xbzrle-cache"] as { bytes?: number } | undefined)?.bytes ?? 0) > 0) return info;
  }
  throw new Error(`no XBZRLE page in 6 migrations of the dirtying guest: ${JSON.stringify(info)}`);
}

async function migrateDirtyingOnce(dir: string, out: string, memMiB: number): Promise<Record<string, unknown>> {
  const disk = join(dir, "boot.img");
  copyFileSync(join(FIXTURES, "dirty-boot.bin"), disk);
  const vm = await startVm({ dir, memMiB, bootDisk: disk }, "dirty");
  try {
    await untilDirtying(vm, dir);
    await vm.qmp("migrate-set-capabilities", { capabilities: [{ capability: "xbzrle", state: true }] });
    // Slow and strict: the two pages it dirties never fit the downtime, so QEMU iterates.
    await vm.qmp("migrate-set-parameters", { "max-bandwidth": 1024 * 1024, "downtime-limit": 1 });
    await vm.qmp("migrate", { uri: `exec:cat > ${out}` });
    for (let i = 0; i < 2000; i++) {
      const info = (await vm.qmp("query-migrate")) as { status?: string; ram?: { "dirty-sync-count"?: number } };
      if (info.status !== "active" && info.status !== "setup") break;
      if ((info.ram?.["dirty-sync-count"] ?? 0) >= 8) break;
      await sleep(5);
    }
    // Now let it finish.
    await vm.qmp("migrate-set-parameters", { "downtime-limit": 2000, "max-bandwidth": 1024 * 1024 * 1024 });
    return await vm.waitMigration();
  } finally {
    await vm.quit();
  }
}

/**
 * Waits until the boot sector runs its loop, seen in its pages (read with pmemsave): the 16
 * words it increments, one every 512 bytes of 0x8000-0x9fff, all counted past 1 and within one
 * of each other (its signature: a pass increments each once), and counting on since the last
 * look. Booting takes the BIOS a while under TCG, longer on a loaded machine: a fixed wait
 * could start the migration before the guest dirties anything.
 */
async function untilDirtying(vm: Awaited<ReturnType<typeof startVm>>, dir: string): Promise<void> {
  const probe = join(dir, "probe.bin");
  const deadline = performance.now() + 60_000;
  let last: number | undefined;
  for (;;) {
    await vm.pmemsave(0x8000, 0x2000, probe);
    const pages = readFileSync(probe);
    const words = Array.from({ length: 16 }, (_, i) => pages.readUInt16LE(i * 512));
    const low = Math.min(...words);
    const looping = low > 1 && Math.max(...words) - low <= 1;
    if (looping && last !== undefined && words[0] !== last) return;
    last = looping ? words[0] : undefined;
    if (performance.now() > deadline) throw new Error("the dirtying guest did not start its loop within 60 s");
    await sleep(50);
  }
}

export async function migratePausedGuest(dir: string, out: string, machine: "pc" | "q35" = "pc", memMiB = 16): Promise<Record<string, unknown>> {
  const blob = join(dir, "blob.bin");
  writeFileSync(blob, BLOB);
  const vm = await startVm({ dir, memMiB, machine, paused: true, loader: { file: blob, addr: BLOB_ADDR } }, "paused");
  try {
    return await vm.migrateTo(out);
  } finally {
    await vm.quit();
  }
}

/**
 * Guest RAM as QEMU itself loads `stream` (pmemsave of a target): the SHA-256 of the low 640 KiB
 * and of 1 MiB up to the end of RAM (between them, guest physical addresses are ROM and VGA,
 * not pc.ram).
 */
export async function loadedDigests(dir: string, stream: string, memMiB = 16): Promise<{ low: string; high: string }> {
  const vm = await loadVm({ dir, memMiB }, stream, "digest");
  try {
    const low = join(dir, "low.bin");
    const high = join(dir, "high.bin");
    await vm.pmemsave(0, 0xa0000, low);
    await vm.pmemsave(0x100000, memMiB * 2 ** 20 - 0x100000, high);
    const sha = (file: string) => createHash("sha256").update(readFileSync(file)).digest("hex");
    return { low: sha(low), high: sha(high) };
  } finally {
    await vm.quit();
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const dir = mkdtempSync(join(tmpdir(), "migstream-qemu-"));
  try {
    const a = await migratePausedGuest(dir, join(FIXTURES, "pc-16m.mig"));
    console.log("pc-16m.mig", JSON.stringify(a.ram));
    const b = await migrateDirtyingGuest(dir, join(FIXTURES, "xbzrle-16m.mig"));
    console.log("xbzrle-16m.mig", JSON.stringify(b.ram), JSON.stringify(b["xbzrle-cache"]));
    const digests: Record<string, unknown> = {};
    for (const name of ["pc-16m.mig", "xbzrle-16m.mig"]) digests[name] = await loadedDigests(dir, join(FIXTURES, name));
    writeFileSync(join(FIXTURES, "loaded.json"), `${JSON.stringify(digests, null, 2)}\n`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
