// The CLI's file output: chunks written in order; `written` resolves (with the temporary path)
// only once all of them are in the file; a failed write fails the writes after it, `written` and
// commit, and abort leaves nothing behind. Every chunk given is released once, also when its write
// fails (before it rejects). A stream output whose peer hung up fails its writes.
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
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
    let given = 0;
    let released = 0;
    for (let i = 0; i < 20 && failure === undefined; i++) {
      try {
        given++;
        await out.write(piece(i), () => released++);
      } catch (error) {
        failure = error;
      }
    }
    expect(failure).toMatchObject({ code: "EIO", message: expect.stringContaining("full.bin") });
    expect((failure as Error).message).not.toContain("migstream-tmp");
    // Every chunk released, the failed one too (before its write rejected).
    expect(released).toBe(given);
    await expect(out.write(piece(0), () => released++)).rejects.toMatchObject({ code: "EIO" });
    expect(released).toBe(given + 1);
    await expect(out.written()).rejects.toMatchObject({ code: "EIO" });
    await expect(out.commit()).rejects.toMatchObject({ code: "EIO" });
    out.abort();
    expect(readdirSync(dir).filter((name) => name.includes("full.bin"))).toEqual([]);
  });
});

describe("stream output", () => {
  it("fails a write once the peer hung up instead of waiting for a drain, and releases every chunk once, a failed one before its write rejects (a lending encoder relies on that)", async () => {
    // A socket whose peer hangs up after the first bytes: a small write is taken at once and
    // fails later.
    const path = join(dir, "peer.sock");
    const server = createServer((socket) => socket.once("data", () => socket.destroy()));
    await new Promise<void>((resolve) => server.listen(path, resolve));
    try {
      const out = await openOutput(planOutput(path, { force: true }));
      /** Per chunk given to `write`: how often it was released. */
      const releases: number[] = [];
      let failure: unknown;
      let failedReleased = -1;
      for (let i = 0; i < 500 && failure === undefined; i++) {
        releases.push(0);
        try {
          await out.write(new Uint8Array(1024).fill(i), () => releases[i]!++);
        } catch (error) {
          failure = error;
          failedReleased = releases[i]!;
        }
        await new Promise((resolve) => setTimeout(resolve, 2));
      }
      expect(failure).toMatchObject({ code: "EIO" });
      expect(releases.length).toBeGreaterThan(1);
      expect(failedReleased).toBe(1);
      // The ones taken before are called back too (a destroyed stream calls back what it holds).
      await new Promise((resolve) => setTimeout(resolve, 20));
      expect(releases).toEqual(releases.map(() => 1));
      // A write after the failure rejects and releases at once.
      let late = 0;
      await expect(out.write(new Uint8Array(8), () => late++)).rejects.toMatchObject({ code: "EIO" });
      expect(late).toBe(1);
      out.abort();
    } finally {
      server.close();
    }
  });
});
