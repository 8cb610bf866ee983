// `send` / `receive --channels N` through the real binary: a snapshot and a live demo device over
// 2 TLS-PSK channels, a stranger's channel refused while the migration succeeds, and a channel
// reset mid-stream failing the whole migration with nothing written.
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { beforeAll, describe, expect, it } from "vitest";
import { encodePreamble } from "../../src/node/transport/channels.js";
import { cuttingRelay } from "../node/relay.js";
import { finished, makeState, run, type RunResult, start, tempFiles, useTestDir, waitForStderr } from "./helpers.js";

const SIZE = 3 * 1024 * 1024 + 512;

const scratch = useTestDir();
const { at } = scratch;

beforeAll(() => {
  writeFileSync(at("vm.state"), makeState(SIZE, 31));
  writeFileSync(at("keys.psk"), `migstream:${"a5".repeat(32)}\n`);
});

async function receiver(args: readonly string[]): Promise<{ port: number; done: Promise<RunResult> }> {
  const child = start(["receive", "--listen", "0", ...args]);
  const listening = waitForStderr(child, /listening on [^\s]+:(\d+)/);
  const done = finished(child);
  const match = await listening;
  return { port: Number(match[1]), done };
}

const psk = (): string[] => ["--tls-psk", at("keys.psk")];
const same = (a: string, b: string): boolean => readFileSync(a).equals(readFileSync(b));

describe("send / receive --channels", () => {
  it("a snapshot over 2 TLS-PSK channels arrives byte-identical", { timeout: 120_000 }, async () => {
    const target = await receiver(["-o", at("two.state"), "--timeout", "20", "--channels", "2", ...psk(), "--json"]);
    const sent = await run(["send", at("vm.state"), "--to", `127.0.0.1:${target.port}`, "--timeout", "20", "--channels", "2", ...psk(), "--json"]);
    const received = await target.done;
    expect(sent.code, sent.stderr).toBe(0);
    expect(received.code, received.stderr).toBe(0);
    expect(JSON.parse(sent.stdout.toString())).toMatchObject({ tls: "psk", channels: 2, accepted: true });
    expect(JSON.parse(received.stdout.toString())).toMatchObject({ tls: "psk", channels: 2, stateBytes: SIZE });
    expect(same(at("two.state"), at("vm.state"))).toBe(true);
    expect(tempFiles(scratch.dir)).toEqual([]);
  });

  it("a snapshot compressed on 2 threads over 2 TLS-PSK channels: the bytes and digest of one thread", { timeout: 120_000 }, async () => {
    // Several of the pool's windows (12 MiB for 2 threads), read again where a record is open.
    writeFileSync(at("big.state"), makeState(26 * 1024 * 1024 + 4096 + 77, 32));
    const digests: string[] = [];
    for (const jobs of ["1", "2"]) {
      const target = await receiver(["-o", at(`jobs-${jobs}.state`), "--timeout", "20", "--channels", "2", ...psk(), "--json"]);
      const sent = await run([
        "send",
        at("big.state"),
        "--to",
        `127.0.0.1:${target.port}`,
        "--timeout",
        "20",
        "--channels",
        "2",
        "--compress",
        "lz4",
        "--jobs",
        jobs,
        ...psk(),
        "--json",
      ]);
      const received = await target.done;
      expect(sent.code, sent.stderr).toBe(0);
      expect(received.code, received.stderr).toBe(0);
      const report = JSON.parse(sent.stdout.toString());
      expect(report).toMatchObject({ channels: 2, jobs: Number(jobs), accepted: true });
      expect(JSON.parse(received.stdout.toString()).digest).toBe(report.digest);
      expect(same(at(`jobs-${jobs}.state`), at("big.state"))).toBe(true);
      digests.push(report.digest);
    }
    expect(digests[1]).toBe(digests[0]);
    // The demo device is encoded round by round: --jobs is refused there.
    const refused = await run(["send", "--demo", "--to", "127.0.0.1:9", "--jobs", "2"]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain("--jobs applies to a snapshot");
  });

  it("a live demo device over 2 TLS-PSK channels, a stranger's channel refused on the way", { timeout: 120_000 }, async () => {
    const target = await receiver(["-o", at("demo.state"), "--timeout", "20", ...psk()]);
    // A stranger (plain TCP to a TLS receiver) claiming to be channel 1: dropped.
    const stranger = connect({ port: target.port, host: "127.0.0.1" });
    stranger.on("error", () => undefined);
    stranger.write(encodePreamble({ id: new Uint8Array(16).fill(9), index: 1, count: 2 }));
    const args = ["send", "--demo", "--size", "8M", "--dirty-rate", "2M/s", "--to", `127.0.0.1:${target.port}`, "--timeout", "20"];
    const sent = await run([...args, "--channels", "2", ...psk(), "--json"]);
    const received = await target.done;
    stranger.destroy();
    expect(sent.code, sent.stderr).toBe(0);
    expect(received.code, received.stderr).toBe(0);
    const report = JSON.parse(sent.stdout.toString());
    expect(report).toMatchObject({ accepted: true });
    expect(received.stderr).toMatch(/dropped 127\.0\.0\.1:\d+ before it owned the migration/);
    expect(existsSync(at("demo.state"))).toBe(true);
    expect(tempFiles(scratch.dir)).toEqual([]);
  });

  it("a channel reset mid-stream fails the migration on both ends; nothing is written", { timeout: 120_000 }, async () => {
    writeFileSync(at("kept.state"), "previous content");
    const target = await receiver(["-o", at("kept.state"), "-f", "--timeout", "20", ...psk()]);
    const relay = await cuttingRelay(target.port, 1, 256 * 1024);
    try {
      const sent = await run(["send", at("vm.state"), "--to", `127.0.0.1:${relay.port}`, "--timeout", "20", "--channels", "2", ...psk()]);
      const received = await target.done;
      await relay.cut;
      expect([2, 4]).toContain(sent.code);
      expect([2, 4]).toContain(received.code);
      expect(readFileSync(at("kept.state"), "utf8")).toBe("previous content");
      expect(tempFiles(scratch.dir)).toEqual([]);
    } finally {
      relay.server.close();
    }
  });

  it("refuses a channel count outside 1..16 (EINVAL, exit 1)", async () => {
    const sent = await run(["send", at("vm.state"), "--to", "127.0.0.1:1", "--channels", "17"]);
    expect(sent.stderr).toMatch(/EINVAL: channels must be an integer from 1 to 16/);
    expect(sent.code).not.toBe(0);
  });
});
