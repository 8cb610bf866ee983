// The worked example: an emulated device (register file + DMA ring written through DMA logging)
// migrated between two real processes, each speaking only openVfioDevice()'s bytes. Runs the
// built package (dist/), as an embedder would import it.
import { spawn } from "node:child_process";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { ROOT } from "../cli/helpers.js";

const EXAMPLE = join(ROOT, "examples", "vfio-device");

interface Ended {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs source | target, optionally cutting the pipe after `cutAfter` bytes. */
function migrate(steps: number, cutAfter?: number): Promise<{ source: Ended; target: Ended }> {
  const source = spawn(process.execPath, [join(EXAMPLE, "source.mjs"), String(steps)], { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
  const target = spawn(process.execPath, [join(EXAMPLE, "target.mjs")], { cwd: ROOT, stdio: ["pipe", "pipe", "pipe"] });
  let passed = 0;
  source.stdout.on("data", (chunk: Buffer) => {
    if (cutAfter === undefined) {
      target.stdin.write(chunk);
      return;
    }
    const room = cutAfter - passed;
    if (room > 0) target.stdin.write(chunk.subarray(0, room));
    passed += chunk.length;
    if (passed >= cutAfter) target.stdin.end();
  });
  source.stdout.on("end", () => target.stdin.end());
  target.stdin.on("error", () => undefined); // a target that gave up closes its stdin
  const ended = (child: typeof source | typeof target): Promise<Ended> => {
    let stdout = "";
    let stderr = "";
    child.stdout?.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr?.on("data", (d: Buffer) => (stderr += d.toString()));
    return new Promise((resolve) => child.on("close", (code) => resolve({ code, stdout, stderr })));
  };
  return Promise.all([ended(source), ended(target)]).then(([s, t]) => ({ source: s, target: t }));
}

describe("examples/vfio-device: a device migrated between two processes through openVfioDevice bytes", () => {
  it("the target's device state and guest memory equal the source's, and the device runs on", async () => {
    const { source, target } = await migrate(200);
    expect(source.code, source.stderr).toBe(0);
    expect(target.code, target.stderr).toBe(0);
    const sent = JSON.parse(source.stderr.trim().split("\n").at(-1)!);
    const got = JSON.parse(target.stdout.trim());
    expect(got.digest).toBe(sent.digest);
    expect(got.state).toBe(2); // VFIO_DEVICE_STATE_RUNNING
    expect(got.runsOn).toBe(true);
    expect(sent.end).toBe("eof");
    // PRE_COPY info started with initial data, then reported what the DMA ring dirtied.
    expect(sent.rounds[0].initialBytes).toBeGreaterThan(0);
    expect(sent.rounds.slice(1).every((r: { dirtyBytes: number }) => r.dirtyBytes > 0)).toBe(true);
    expect(sent.rounds.slice(1).some((r: { guestPages: number }) => r.guestPages > 0)).toBe(true);
    expect(sent.lastArc).toBe("STOP_COPY->STOP");
  }, 60_000);

  it("a stream cut short fails the target instead of resuming a partial device", async () => {
    const { target } = await migrate(50, 300_000);
    expect(target.code).not.toBe(0);
    expect(target.stderr).toMatch(/did not finish|ended inside a frame/);
  }, 60_000);
});
