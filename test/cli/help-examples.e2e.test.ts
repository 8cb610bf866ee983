// Every example of every `migstream <command> --help` runs and exits 0, with `migstream` on PATH,
// in a folder holding the files the examples name (made below, the way a user would: a snapshot,
// its stream, a second snapshot and the stream between them, a PSK file). Outputs an example
// writes (`-o name`) are not there beforehand. The only rewrite: `send` examples dial
// `target:7400`, which here is a receiver started from the matching `receive --help` example
// (same position) on port 0, dialled on the port it says it listens on.
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { cpSync, mkdirSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { cliOnPath } from "../support/doc-blocks.js";
import { CLI, makeState, useTestDir } from "./helpers.js";

const COMMANDS = ["encode", "decode", "diff", "apply", "inspect", "verify", "demo", "send", "receive"] as const;

function examplesOf(command: string): string[] {
  const help = execFileSync(process.execPath, [CLI, command, "--help"], { encoding: "utf8" });
  const at = help.search(/^Examples?:$/m);
  if (at < 0) return [];
  const lines = help.slice(at).split("\n").slice(1);
  const end = lines.findIndex((l) => !l.startsWith("  "));
  return (end < 0 ? lines : lines.slice(0, end)).map((l) => l.trim());
}

const scratch = useTestDir();
let bin = "";
let fixtures = "";

beforeAll(() => {
  bin = cliOnPath();
  fixtures = scratch.at("fixtures");
  mkdirSync(fixtures);
  const v1 = makeState(4 << 20, 16);
  const v2 = Buffer.from(v1);
  v2.fill(0x5a, 100_000, 140_000);
  writeFileSync(join(fixtures, "vm.state"), v1);
  writeFileSync(join(fixtures, "vm.v1.state"), v1);
  writeFileSync(join(fixtures, "vm.v2.state"), v2);
  writeFileSync(join(fixtures, "keys.psk"), `migstream:${"a5".repeat(32)}\n`);
  execFileSync(process.execPath, [CLI, "encode", "vm.state", "-o", "vm.mig", "-q"], { cwd: fixtures });
  execFileSync(process.execPath, [CLI, "diff", "vm.v1.state", "vm.v2.state", "-o", "v1-to-v2.mig", "-q"], { cwd: fixtures });
});
afterAll(() => rmSync(bin, { recursive: true, force: true }));

let folders = 0;
/** A fresh copy of the fixtures without the files `example` writes. */
function folderFor(example: string): string {
  const dir = scratch.at(`run-${folders++}`);
  cpSync(fixtures, dir, { recursive: true });
  for (const match of example.matchAll(/-o (\S+)/g)) if (match[1] !== "-") rmSync(join(dir, match[1]!), { force: true });
  return dir;
}

function shell(example: string, cwd: string): ChildProcess {
  return spawn("bash", ["-o", "pipefail", "-c", example], {
    cwd,
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, PATH: `${bin}:${process.env.PATH ?? ""}`, NO_PROGRESS: "1" },
  });
}

function outcome(child: ChildProcess): Promise<{ code: number | null; output: string }> {
  let output = "";
  child.stdout?.on("data", (d: Buffer) => (output += d.toString()));
  child.stderr?.on("data", (d: Buffer) => (output += d.toString()));
  return new Promise((resolve) => child.on("close", (code) => resolve({ code, output })));
}

/**
 * The port a receiver started with `--listen` port 0 says it listens on (its first line on
 * stderr; a port picked by the system, so no other test can hold it, and dialled only once the
 * receiver listens).
 */
function listeningPort(child: ChildProcess): Promise<string> {
  return new Promise((resolve, reject) => {
    let said = "";
    const read = (d: Buffer): void => {
      said += d.toString();
      const port = /listening on \S+:(\d+)/.exec(said)?.[1];
      if (port === undefined) return;
      child.stderr?.off("data", read);
      resolve(port);
    };
    child.stderr?.on("data", read);
    child.once("close", (code) => reject(new Error(`the receiver ended (${code}) before it listened: ${said}`)));
  });
}

describe("--help examples", () => {
  it("every command but the pairs below has examples, and they run", { timeout: 300_000 }, async () => {
    for (const command of COMMANDS.filter((c) => c !== "send" && c !== "receive")) {
      const examples = examplesOf(command);
      expect(examples.length, `${command} --help has no example`).toBeGreaterThan(0);
      for (const example of examples) {
        const { code, output } = await outcome(shell(example, folderFor(example)));
        expect(code, `${command}: ${example}\n${output}`).toBe(0);
      }
    }
  });

  it("each send example reaches the receive example at the same position", { timeout: 300_000 }, async () => {
    const sends = examplesOf("send");
    const receives = examplesOf("receive");
    expect(sends.length).toBeGreaterThan(0);
    expect(sends.length).toBe(receives.length);
    for (const [i, send] of sends.entries()) {
      const receive = receives[i]!.replace(/\b7400\b/, "0");
      const receiver = shell(receive, folderFor(receive));
      const received = outcome(receiver);
      const port = await listeningPort(receiver);
      const sender = send.replace("target:7400", `127.0.0.1:${port}`);
      const sent = await outcome(shell(sender, folderFor(sender)));
      expect(sent.code, `${send}\n${sent.output}`).toBe(0);
      const got = await received;
      expect(got.code, `${receive}\n${got.output}`).toBe(0);
    }
    expect(readdirSync(scratch.dir).length).toBeGreaterThan(1);
  });
});
