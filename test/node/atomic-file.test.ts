// AtomicFile's background flushes: outputs larger than SYNC_AHEAD_BYTES are written back as they
// are written, each flush on a descriptor of its own, and neither commit nor abort waits for them
// or leaves anything behind.
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setImmediate as turn } from "node:timers/promises";
import { afterAll, describe, expect, it } from "vitest";
import { AtomicFile, SYNC_AHEAD_BYTES } from "../../src/node/atomic-file.js";

const dir = mkdtempSync(join(tmpdir(), "migstream-atomic-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const openDescriptors = (): number => readdirSync("/proc/self/fd").length;

/** Writes `chunks` pieces of 1 MiB, piece i filled with i, returning to the event loop after each. */
async function fill(file: AtomicFile, chunks: number): Promise<void> {
  const piece = new Uint8Array(1 << 20);
  for (let i = 0; i < chunks; i++) {
    piece.fill(i & 0xff);
    file.writeAt(piece, i * piece.length);
    await turn();
  }
}

/** Waits until the descriptors open are back to `count` (background flushes ended), at most 10 s. */
async function descriptorsBackTo(count: number): Promise<number> {
  const deadline = performance.now() + 10_000;
  while (openDescriptors() > count && performance.now() < deadline) await new Promise((r) => setTimeout(r, 5));
  return openDescriptors();
}

describe.skipIf(process.platform !== "linux")("AtomicFile background flushes", () => {
  const chunks = (2 * SYNC_AHEAD_BYTES) / (1 << 20) + 3;

  it("an output past the flush size commits whole, and its flush descriptors are all closed", async () => {
    const before = openDescriptors();
    const path = join(dir, "big.bin");
    const file = new AtomicFile(path);
    await fill(file, chunks);
    file.commit();
    expect(await descriptorsBackTo(before)).toBe(before);
    const written = readFileSync(path);
    expect(written.length).toBe(chunks << 20);
    for (let i = 0; i < chunks; i++) expect([written[i << 20], written[((i + 1) << 20) - 1]]).toEqual([i & 0xff, i & 0xff]);
    expect(readdirSync(dir).filter((n) => n.endsWith(".migstream-tmp"))).toEqual([]);
  });

  it("abort while flushes run: no temporary left, descriptors all closed", async () => {
    const before = openDescriptors();
    const file = new AtomicFile(join(dir, "aborted.bin"));
    const piece = new Uint8Array(1 << 20);
    // Written without a turn of the event loop: the flushes started cannot have ended.
    for (let i = 0; i < chunks; i++) file.writeAt(piece, i * piece.length);
    expect(openDescriptors()).toBeGreaterThan(before + 1);
    file.abort();
    expect(readdirSync(dir).filter((n) => n.startsWith(".aborted.bin"))).toEqual([]);
    expect(await descriptorsBackTo(before)).toBe(before);
  });

  it("a writer that never returns to the event loop starts at most two flushes", () => {
    const before = openDescriptors();
    const file = new AtomicFile(join(dir, "busy.bin"));
    const piece = new Uint8Array(1 << 20);
    for (let i = 0; i < 5 * (SYNC_AHEAD_BYTES >> 20); i++) file.writeAt(piece, i * piece.length);
    // Its own descriptor and two flushes'.
    expect(openDescriptors()).toBe(before + 3);
    file.abort();
  });
});
