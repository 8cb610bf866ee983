// The CLI's file output: chunks written in order; `written` resolves (with the temporary path)
// only once all of them are in the file; a failed write fails the writes after it, `written` and
// commit, and abort leaves nothing behind.
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";

// Read by the output module when it loads: writes past 3 MiB of a temporary output fail as a full
// disk would (only the file named "full.bin" goes past it).
process.env.MIGSTREAM_FAULT_ENOSPC_AT = String(3 << 20);
const { openOutput, planOutput } = await import("../../src/cli/common.js");

const dir = mkdtempSync(join(tmpdir(), "migstream-output-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const piece = (i: number): Uint8Array => new Uint8Array(256 * 1024).fill(i + 1);

describe("file output", () => {
  it("writes started at once all end, in order, and `written` waits for the last", async () => {
    const path = join(dir, "many.bin");
    const out = await openOutput(planOutput(path, { force: true }));
    const released: number[] = [];
    // More than the queue holds, none awaited before the next: every one must settle.
    const writes = Array.from({ length: 10 }, (_, i) => out.write(piece(i), () => released.push(i)));
    await Promise.all(writes);
    const temp = await out.written();
    expect(temp).toBeDefined();
    expect(readFileSync(temp!).length).toBe(10 * 256 * 1024);
    expect(released).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    await out.commit();
    const written = readFileSync(path);
    for (let i = 0; i < 10; i++) expect(written[i * 256 * 1024]).toBe(i + 1);
  });

  it("a write that fails (a full disk) fails the next write, `written` and commit; abort leaves nothing", async () => {
    const out = await openOutput(planOutput(join(dir, "full.bin"), { force: true }));
    let failure: unknown;
    for (let i = 0; i < 20 && failure === undefined; i++) {
      try {
        await out.write(piece(i));
      } catch (error) {
        failure = error;
      }
    }
    expect(failure).toMatchObject({ code: "EIO", message: expect.stringContaining("full.bin") });
    expect((failure as Error).message).not.toContain("migstream-tmp");
    await expect(out.write(piece(0))).rejects.toMatchObject({ code: "EIO" });
    await expect(out.written()).rejects.toMatchObject({ code: "EIO" });
    await expect(out.commit()).rejects.toMatchObject({ code: "EIO" });
    out.abort();
    expect(readdirSync(dir).filter((name) => name.includes("full.bin"))).toEqual([]);
  });
});
