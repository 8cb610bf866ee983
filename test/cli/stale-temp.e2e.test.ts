// Nothing left behind, even after SIGKILL: a receive killed mid-transfer leaves its temporary
// file (no cleanup can run), and the next command writing into the same directory removes it,
// while a temporary whose process still runs stays.
import { spawn } from "node:child_process";
import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { beforeAll, expect, it } from "vitest";
import { removeStaleTemporaries } from "../../src/node/atomic-file.js";
import { finished, makeState, run, start, tempFiles, useTestDir, waitForStderr } from "./helpers.js";

const scratch = useTestDir();
const { at } = scratch;

beforeAll(async () => {
  writeFileSync(at("vm.state"), makeState(16 * 1024 * 1024, 5));
  const encoded = await run(["encode", at("vm.state"), "-o", at("vm.mig"), "--quiet"]);
  expect(encoded.code, encoded.stderr).toBe(0);
});

async function until(check: () => boolean, timeoutMs = 20_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > end) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 20));
  }
}

it("a SIGKILLed receive's full-size temporary is removed by the next decode into the same directory; a live one stays", { timeout: 60_000 }, async () => {
  const out = join(scratch.dir, "out");
  mkdirSync(out);
  const child = start(["receive", "--listen", "0", "-o", join(out, "vm.state")]);
  const done = finished(child);
  const port = Number((await waitForStderr(child, /listening on [^\s]+:(\d+)/))[1]);
  const stream = readFileSync(at("vm.mig"));
  const socket = connect(port, "127.0.0.1");
  socket.on("error", () => undefined);
  // Most of the stream, then nothing: the receiver is writing its temporary file when killed.
  socket.write(stream.subarray(0, stream.length - 4096));
  await until(() => tempFiles(out).length === 1 && statSync(join(out, tempFiles(out)[0]!)).size >= 15 * 1024 * 1024);
  child.kill("SIGKILL");
  const killed = await done;
  socket.destroy();
  expect(killed.signal).toBe("SIGKILL");
  const left = tempFiles(out);
  expect(left).toHaveLength(1);
  expect(left[0]).toMatch(new RegExp(`^\\.vm\\.state\\.${child.pid}\\.[0-9a-f]{8}\\.migstream-tmp$`));

  // A temporary of a process that still runs (another command writing there right now).
  const sleeper = spawn("sleep", ["30"]);
  const live = `.other.state.${sleeper.pid}.0123abcd.migstream-tmp`;
  writeFileSync(join(out, live), "in progress");
  try {
    const decoded = await run(["decode", at("vm.mig"), "-o", join(out, "decoded.state")]);
    expect(decoded.code, decoded.stderr).toBe(0);
    expect(tempFiles(out)).toEqual([live]);
    expect(readdirSync(out).sort()).toEqual([live, "decoded.state"].sort());
  } finally {
    sleeper.kill("SIGKILL");
  }
});

it("removeStaleTemporaries leaves other files, this process's temporaries and an unreadable directory alone", () => {
  const dir = join(scratch.dir, "mixed");
  mkdirSync(dir);
  const mine = `.a.${process.pid}.00000000.migstream-tmp`;
  // PID 2^22 + 1 is above Linux's pid_max limit: no such process can exist.
  const dead = `.b.${2 ** 22 + 1}.0badcafe.migstream-tmp`;
  const names = [mine, dead, "keep.state", ".c.12.not-hex!.migstream-tmp", "vm.state.123.abcdef01.migstream-tmp"];
  for (const name of names) writeFileSync(join(dir, name), "x");
  expect(removeStaleTemporaries(dir)).toEqual([dead]);
  expect(readdirSync(dir).sort()).toEqual(names.filter((n) => n !== dead).sort());
  expect(removeStaleTemporaries(join(dir, "missing"))).toEqual([]);
});
