// The live commands under the issue-12 rules, through the real binary: `receive -o - --json`
// keeps stdout pure and stderr JSON Lines, failures of send and receive are JSON error objects,
// `send -` reads its snapshot from stdin, and migrations show their phase on a terminal.
import { readFileSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { beforeAll, describe, expect, it } from "vitest";
import { finished, makeState, run, start, useTestDir, waitForStderr } from "./helpers.js";

const SIZE = 1024 * 1024 + 512;
const scratch = useTestDir();
const { at } = scratch;

beforeAll(async () => {
  writeFileSync(at("vm.state"), makeState(SIZE, 5));
});

describe("live commands, --json and stdin", () => {
  it("receive -o - --json: state on stdout, stderr is JSON Lines (listening, then the report); send - reads stdin", async () => {
    const child = start(["receive", "--listen", "0", "-o", "-", "--json"]);
    const listening = waitForStderr(child, /"event":"listening".*"port":(\d+)/);
    const done = finished(child);
    const port = Number((await listening)[1]);
    const sent = await run(["send", "-", "--to", `127.0.0.1:${port}`, "--json"], { input: readFileSync(at("vm.state")) });
    expect(sent.code, sent.stderr).toBe(0);
    expect(JSON.parse(sent.stdout.toString())).toMatchObject({ command: "send", accepted: true });
    const received = await done;
    expect(received.code, received.stderr).toBe(0);
    expect(received.stdout.equals(readFileSync(at("vm.state")))).toBe(true);
    const lines = received.stderr
      .trim()
      .split("\n")
      .map((line) => JSON.parse(line) as Record<string, unknown>);
    expect(lines[0]).toMatchObject({ command: "receive", event: "listening", port });
    expect(lines.at(-1)).toMatchObject({ command: "receive", output: "-", bytes: expect.any(Number), durationMs: expect.any(Number) });
  });

  it("a receive that fails prints the error object on stdout with its exit code", async () => {
    writeFileSync(at("cut.state"), new Uint8Array(64 * 1024).fill(7));
    expect((await run(["encode", at("cut.state"), "-o", at("cut.mig")])).code).toBe(0);
    const child = start(["receive", "--listen", "0", "-o", at("never.state"), "--json"]);
    const listening = waitForStderr(child, /listening on [^\s]+:(\d+)/);
    const done = finished(child);
    const port = Number((await listening)[1]);
    // A valid header owns the migration; the stream then ends early (a peer that cannot even
    // send a header is only dropped, and receive keeps listening for the real sender).
    const stream = readFileSync(at("cut.mig"));
    await new Promise<void>((resolve, reject) => {
      const socket = connect(port, "127.0.0.1", () => socket.end(stream.subarray(0, stream.length - 20), () => resolve()));
      socket.on("error", reject);
    });
    const result = await done;
    expect(result.code).toBe(2);
    const doc = JSON.parse(result.stdout.toString()) as { command: string; error: { code: string; exitCode: number } };
    expect(doc).toMatchObject({ command: "receive", error: { exitCode: 2 } });
    expect(["EBADMSG", "ENODATA"]).toContain(doc.error.code);
  });

  it("demo shows its phase (pre-copy round N, stop-copy) on a terminal, and clears it", async () => {
    const result = await run(["demo", "--size", "8M", "--dirty-rate", "4M/s"], { env: { NO_PROGRESS: "", MIGSTREAM_FORCE_TTY: "1", COLUMNS: "100" } });
    expect(result.code, result.stderr).toBe(0);
    const frames = result.stderr.split("\r").filter((f) => f.startsWith("demo ·"));
    expect(frames.some((f) => f.includes("pre-copy round 0"))).toBe(true);
    for (const frame of frames) expect(frame.replace(/\x1b\[K[\s\S]*$/, "").length).toBeLessThan(100);
    expect(result.stderr).toMatch(/\r\x1b\[Kdemo device/);
  });
});
