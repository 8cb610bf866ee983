// End-to-end tests of live migration through the real binary: `receive` and `send` as two
// processes on loopback TCP, a sender that dies mid-stream, a device id mismatch, and `demo`.
// The transport's trust rules (deadlines, TLS, the verdict) are in transport.e2e.test.ts.
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { xxh3Reference } from "../../src/core/reference/xxh3.js";
import { ensureBuilt, finished, makeState, run, type RunResult, start, tempDir, tempFiles, waitForStderr } from "./helpers.js";

const SIZE = 2 * 1024 * 1024 + 512;

let dir: string;
let cleanup: () => void;
const at = (name: string): string => join(dir, name);
const hex = (v: bigint): string => `0x${v.toString(16).padStart(16, "0")}`;

beforeAll(async () => {
  await ensureBuilt();
  ({ dir, cleanup } = tempDir());
  writeFileSync(at("vm.state"), makeState(SIZE, 11));
  const encoded = await run(["encode", at("vm.state"), "-o", at("vm.mig"), "--quiet"]);
  expect(encoded.code, encoded.stderr).toBe(0);
});

afterAll(() => cleanup?.());

/** Starts `receive --listen 0` and resolves with the port it bound (printed on stderr). */
async function receiver(args: readonly string[]): Promise<{ port: number; done: Promise<RunResult> }> {
  const child = start(["receive", "--listen", "0", ...args]);
  const listening = waitForStderr(child, /listening on [^\s]+:(\d+)/);
  const done = finished(child);
  const match = await listening;
  return { port: Number(match[1]), done };
}

interface SendJson {
  rounds: { round: number; pages: number; bytes: number; dirtyBytes: number; dirtyRate: number; expectedDowntimeMs: number }[];
  converged: string;
  bytes: number;
  downtimeMs: number;
  throughput: number;
  digest: string;
  accepted: boolean;
}

describe("send and receive over loopback TCP", () => {
  it("a clean transfer writes a snapshot identical to the source", async () => {
    const target = await receiver(["-o", at("received.state"), "--json"]);
    const sent = await run(["send", at("vm.state"), "--to", `127.0.0.1:${target.port}`, "--json"]);
    const received = await target.done;
    expect(sent.code, sent.stderr).toBe(0);
    expect(received.code, received.stderr).toBe(0);
    expect(readFileSync(at("received.state")).equals(readFileSync(at("vm.state")))).toBe(true);
    expect(tempFiles(dir)).toEqual([]);

    const sender = JSON.parse(sent.stdout.toString()) as SendJson;
    expect(sender.accepted).toBe(true);
    expect(sender.rounds.length).toBeGreaterThanOrEqual(1);
    expect(sender.rounds[0]).toMatchObject({ round: 0, pages: Math.ceil(SIZE / 4096) });
    expect(sender.bytes).toBeGreaterThan(0);
    const report = JSON.parse(received.stdout.toString()) as { bytes: number; digest: string; header: { totalSize: number; regions: unknown[] } };
    expect(report.bytes).toBe(sender.bytes);
    expect(report.header.totalSize).toBe(SIZE);
    expect(report.header.regions).toEqual([{ name: "state", size: SIZE }]);
    // Both ends name the same state, and it is the file's.
    const digest = hex(xxh3Reference(readFileSync(at("vm.state"))));
    expect(report.digest).toBe(digest);
    expect(sender.digest).toBe(digest);
  });

  it("the demo device migrates while its workload writes, and the receiver gets the state it stopped with", async () => {
    const target = await receiver(["-o", at("demo.state"), "--json"]);
    const sent = await run(["send", "--demo", "--size", "4M", "--dirty-rate", "20000", "--to", String(target.port), "--json"]);
    const received = await target.done;
    expect(sent.code, sent.stderr).toBe(0);
    expect(received.code, received.stderr).toBe(0);
    const sender = JSON.parse(sent.stdout.toString()) as SendJson & { workload: { writes: number } };
    const report = JSON.parse(received.stdout.toString()) as { digest: string };
    expect(sender.workload.writes).toBeGreaterThan(0);
    expect(report.digest).toBe(sender.digest);
    expect(hex(xxh3Reference(readFileSync(at("demo.state"))))).toBe(sender.digest);
  });

  it("a connection dropped mid-stream: the receiver exits 2 and writes nothing", async () => {
    writeFileSync(at("kept.state"), "previous state");
    const target = await receiver(["-o", at("kept.state"), "-f"]);
    const stream = readFileSync(at("vm.mig"));
    // A fake sender: half a valid stream, then the socket is destroyed.
    await new Promise<void>((resolve, reject) => {
      const socket = connect(target.port, "127.0.0.1", () => {
        socket.write(stream.subarray(0, stream.length >> 1), () => {
          socket.destroy();
          resolve();
        });
      });
      socket.on("error", reject);
    });
    const received = await target.done;
    expect(received.code, received.stderr).toBe(2);
    expect(received.stderr).toMatch(/ENODATA/);
    expect(readFileSync(at("kept.state"), "utf8")).toBe("previous state");
    expect(tempFiles(dir)).toEqual([]);
  });

  it("receive -o - writes the stored state to stdout once validated", async () => {
    const target = await receiver(["-o", "-"]);
    const sent = await run(["send", at("vm.state"), "--to", String(target.port)]);
    const received = await target.done;
    expect(sent.code, sent.stderr).toBe(0);
    expect(received.code, received.stderr).toBe(0);
    expect(received.stdout.equals(readFileSync(at("vm.state")))).toBe(true);
  });

  it("a stream for another device id: both ends exit 3, nothing written", async () => {
    const target = await receiver(["-o", at("foreign.state"), "--device-id", "nic-v2"]);
    const sent = await run(["send", at("vm.state"), "--to", `127.0.0.1:${target.port}`, "--device-id", "nic-v1"]);
    const received = await target.done;
    expect(received.code, received.stderr).toBe(3);
    expect(received.stderr).toMatch(/ENODEV/);
    expect(sent.code, sent.stderr).toBe(3);
    expect(sent.stderr).toMatch(/ENODEV/);
    expect(existsSync(at("foreign.state"))).toBe(false);
    expect(tempFiles(dir)).toEqual([]);
  });

  it("exit 4 when nobody listens, 1 for usage errors", { timeout: 120_000 }, async () => {
    // Nothing listens on port 1 (a privileged port no test binds; a port bound and freed could be
    // taken meanwhile by another test running beside this one): connecting to it is refused.
    const port = 1;
    const refused = await run(["send", at("vm.state"), "--to", `127.0.0.1:${port}`]);
    expect(refused.code, refused.stderr).toBe(4);
    // It connects first: a snapshot it could not even read (a directory) fails on the refused
    // connection, not on reading.
    const first = await run(["send", dir, "--to", `127.0.0.1:${port}`]);
    expect(first.code, first.stderr).toBe(4);
    expect(first.stderr).toMatch(/ECONNREFUSED/);
    const usage = [
      ["send", "--to", "127.0.0.1:1"],
      ["send", at("vm.state"), "--demo", "--to", "1"],
      ["send", at("vm.state"), "--to", "nowhere"],
      ["receive", "-o", at("x.state")],
      ["send", at("vm.state"), "--to", "1", "--timeout", "0"],
      ["receive", "--listen", "0", "-o", at("x.state"), "--timeout", "soon"],
      ["send", at("vm.state"), "--to", "1", "--tls-cert", at("vm.state")],
      ["receive", "--listen", "0", "-o", at("x.state"), "--tls-psk", at("vm.state")],
    ];
    const results = await Promise.all(usage.map((args) => run(args)));
    results.forEach((result, i) => expect(result.code, `${usage[i]!.join(" ")}: ${result.stderr}`).toBe(1));
  });

  it("every live command has help with an example", { timeout: 120_000 }, async () => {
    const helps = await Promise.all(["demo", "send", "receive"].map((command) => run([command, "--help"])));
    for (const help of helps) {
      expect(help.code).toBe(0);
      expect(help.stdout.toString()).toMatch(/Example/);
    }
  });
});

describe("demo", () => {
  it("--size 16M --json migrates a running device and reports identical states", async () => {
    const result = await run(["demo", "--size", "16M", "--json"]);
    expect(result.code, result.stderr).toBe(0);
    const report = JSON.parse(result.stdout.toString()) as SendJson & {
      device: { size: number };
      workload: { writes: number; stoppedAt: string | null };
      verification: { identical: boolean; sourceDigest: string; targetDigest: string };
      maxRssBytes: number;
    };
    expect(report.device.size).toBe(16 * 1024 * 1024);
    expect(report.verification.identical).toBe(true);
    expect(report.verification.sourceDigest).toBe(report.verification.targetDigest);
    expect(report.rounds.length).toBeGreaterThanOrEqual(1);
    for (const round of report.rounds) {
      expect(round.pages).toBeGreaterThan(0);
      expect(round.bytes).toBeGreaterThan(0);
      expect(round.dirtyRate).toBeGreaterThanOrEqual(0);
      expect(round.expectedDowntimeMs).toBeGreaterThanOrEqual(0);
    }
    expect(report.bytes).toBeGreaterThan(0);
    expect(report.downtimeMs).toBeGreaterThanOrEqual(0);
    expect(report.throughput).toBeGreaterThan(0);
    // Like every command's report: the process's peak, which holds both 16 MiB devices.
    expect(report.maxRssBytes).toBeGreaterThan(2 * 16 * 1024 * 1024);
    // The workload wrote while the device ran and stopped once it no longer did.
    expect(report.workload.writes).toBeGreaterThan(0);
    expect(["STOP_COPY", "STOP"]).toContain(report.workload.stoppedAt);
  });

  it("with shadow and hash tracking, text report on stderr", { timeout: 120_000 }, async () => {
    const results = await Promise.all(
      ["shadow", "hash"].map((tracking) => run(["demo", "--size", "4M", "--tracking", tracking, "--dirty-rate", "8M/s", "--seed", "3"])),
    );
    for (const result of results) {
      expect(result.code, result.stderr).toBe(0);
      expect(result.stdout.length).toBe(0);
      expect(result.stderr).toMatch(/round\s+pages/);
      expect(result.stderr).toMatch(/verified\s+source and target states are identical/);
    }
  });
});
