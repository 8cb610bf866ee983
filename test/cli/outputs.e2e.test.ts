// End-to-end tests of what careful users expect of the CLI's outputs, signals and errors (issue
// 12): outputs that are not regular files written through, no overwrite without -f, modes kept,
// nothing left behind by any ending signal, one error style with hints, the JSON error object.
import { execFileSync, spawn } from "node:child_process";
import { chmodSync, existsSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { beforeAll, describe, expect, it } from "vitest";
import { CLI, finished, makeState, run, start, tempDir, tempFiles, useTestDir } from "./helpers.js";

const SIZE = 2 * 1024 * 1024 + 123;
const scratch = useTestDir();
const { at } = scratch;
const isRoot = typeof process.getuid === "function" && process.getuid() === 0;

/** Everything in the test folder whose name says it is temporary, and $TMPDIR spools. */
const leftovers = (tmp: string): string[] => [...tempFiles(scratch.dir), ...readdirSync(tmp)];

beforeAll(async () => {
  writeFileSync(at("a.state"), makeState(SIZE, 3));
  const b = makeState(SIZE, 3);
  b.write("changed", 4096 * 10);
  writeFileSync(at("b.state"), b);
  const [full, diff] = await Promise.all([
    run(["encode", at("a.state"), "-o", at("a.mig"), "-q"]),
    run(["diff", at("a.state"), at("b.state"), "-o", at("ab.mig"), "-q"]),
  ]);
  expect(full.code, full.stderr).toBe(0);
  expect(diff.code, diff.stderr).toBe(0);
});

describe("1. outputs that are not regular files are written through", () => {
  it("a FIFO gets the stream and stays a FIFO", async () => {
    execFileSync("mkfifo", [at("out.fifo")]);
    const reader = spawn("cat", [at("out.fifo")], { stdio: ["ignore", "pipe", "inherit"] });
    const chunks: Buffer[] = [];
    reader.stdout.on("data", (d: Buffer) => chunks.push(d));
    const readerDone = new Promise((resolve) => reader.on("close", resolve));
    const result = await run(["decode", at("a.mig"), "-o", at("out.fifo")]);
    await readerDone;
    expect(result.code, result.stderr).toBe(0);
    expect(Buffer.concat(chunks).equals(readFileSync(at("a.state")))).toBe(true);
    expect(statSync(at("out.fifo")).isFIFO()).toBe(true);
  });

  it.skipIf(!isRoot)("a character device (mknod, as root) is written to, not replaced", async () => {
    execFileSync("mknod", [at("null.dev"), "c", "1", "3"]); // /dev/null's numbers
    execFileSync("mknod", [at("full.dev"), "c", "1", "7"]); // /dev/full's numbers
    const ok = await run(["encode", at("a.state"), "-o", at("null.dev")]);
    expect(ok.code, ok.stderr).toBe(0);
    expect(statSync(at("null.dev")).isCharacterDevice()).toBe(true);
    const full = await run(["encode", at("a.state"), "-o", at("full.dev")]);
    expect(full.code).toBe(4);
    expect(full.stderr).toMatch(/^migstream: EIO: cannot write .*full\.dev: ENOSPC/m);
    expect(statSync(at("full.dev")).isCharacterDevice()).toBe(true);
  });

  it("/dev/full as stdout is a clean EIO error, without a stack trace or staging left", async () => {
    const tmp = tempDir();
    try {
      const child = spawn(`${JSON.stringify(process.execPath)} ${JSON.stringify(CLI)} decode ${JSON.stringify(at("a.mig"))} -o - > /dev/full`, {
        shell: true,
        env: { ...process.env, NO_PROGRESS: "1", TMPDIR: tmp.dir },
      });
      const result = await finished(child);
      expect(result.code).toBe(4);
      expect(result.stderr.trim()).toBe("migstream: EIO: cannot write stdout: ENOSPC: no space left on device, write");
      expect(leftovers(tmp.dir)).toEqual([]);
    } finally {
      tmp.cleanup();
    }
  });

  it("encode --jobs 2 to a socket that reads late gives the stream it writes to a file", async () => {
    // The pool's records go to the socket uncopied, and their memory is reused only once the
    // socket released them (here, after waiting for the reader: every write waits for a drain).
    writeFileSync(at("big.state"), makeState(40 * 1024 * 1024 + 5, 9));
    const file = await run(["encode", at("big.state"), "--jobs", "2", "--compress", "lz4", "-o", at("big.mig"), "-q"]);
    expect(file.code, file.stderr).toBe(0);
    const received: Buffer[] = [];
    let done: () => void = () => undefined;
    const ended = new Promise<void>((resolve) => (done = resolve));
    const server = createServer((socket) => {
      socket.pause();
      setTimeout(() => socket.resume(), 500);
      socket.on("data", (data: Buffer) => received.push(data));
      socket.on("end", done);
    });
    await new Promise<void>((resolve) => server.listen(at("slow.sock"), resolve));
    try {
      const result = await run(["encode", at("big.state"), "--jobs", "2", "--compress", "lz4", "-o", at("slow.sock"), "-q"]);
      expect(result.code, result.stderr).toBe(0);
      await ended;
      expect(Buffer.concat(received).equals(readFileSync(at("big.mig")))).toBe(true);
    } finally {
      server.close();
    }
  });

  it("decode -o - | head -c 10 ends quietly and leaves no staging", async () => {
    const tmp = tempDir();
    try {
      const command = `${JSON.stringify(process.execPath)} ${JSON.stringify(CLI)} decode ${JSON.stringify(at("a.mig"))} -o - | head -c 10; echo "status=\${PIPESTATUS[0]}" >&2`;
      const child = spawn("bash", ["-c", command], { env: { ...process.env, NO_PROGRESS: "1", TMPDIR: tmp.dir } });
      const result = await finished(child);
      expect(result.stdout.length).toBe(10);
      expect(result.stderr).toMatch(/status=141/);
      expect(result.stderr).not.toMatch(/Error|at /);
      expect(leftovers(tmp.dir)).toEqual([]);
    } finally {
      tmp.cleanup();
    }
  });
});

describe("outputs named through links, stdin as an input, --report as an output", () => {
  it("-o /dev/stdout writes to whatever stdout is (a pipe, a file the shell opened), like -", () => {
    const piped = execFileSync(
      "bash",
      ["-c", `${JSON.stringify(process.execPath)} ${JSON.stringify(CLI)} decode ${JSON.stringify(at("a.mig"))} -o /dev/stdout -q | wc -c`],
      { encoding: "utf8" },
    );
    expect(Number(piped.trim())).toBe(SIZE);
    execFileSync("bash", [
      "-c",
      `${JSON.stringify(process.execPath)} ${JSON.stringify(CLI)} decode ${JSON.stringify(at("a.mig"))} -o /dev/stdout -q > ${JSON.stringify(at("via-stdout.state"))}`,
    ]);
    expect(statSync(at("via-stdout.state")).size).toBe(SIZE);
  });

  it("an output that is also stdin is refused up front, even with -f", () => {
    writeFileSync(at("self.mig"), readFileSync(at("a.mig")));
    let code = 0;
    let stderr = "";
    try {
      execFileSync(
        "bash",
        [
          "-c",
          `${JSON.stringify(process.execPath)} ${JSON.stringify(CLI)} decode - -o ${JSON.stringify(at("self.mig"))} -f < ${JSON.stringify(at("self.mig"))}`,
        ],
        { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] },
      );
    } catch (error) {
      code = (error as { status: number }).status;
      stderr = String((error as { stderr: string }).stderr);
    }
    expect(code).toBe(1);
    expect(stderr).toMatch(/also an input \(stdin\)/);
    expect(readFileSync(at("self.mig")).equals(readFileSync(at("a.mig")))).toBe(true);
  });

  it("--report follows the output rules: an existing file needs -f, a FIFO is written through", async () => {
    writeFileSync(at("old.html"), "keep");
    const refused = await run(["demo", "--size", "1M", "--report", at("old.html"), "-q"]);
    expect(refused.code, refused.stderr).toBe(1);
    expect(refused.stderr).toMatch(/EEXIST: output .*old\.html exists/);
    expect(readFileSync(at("old.html"), "utf8")).toBe("keep");
    const forced = await run(["demo", "--size", "1M", "--report", at("old.html"), "-q", "-f"]);
    expect(forced.code, forced.stderr).toBe(0);
    expect(readFileSync(at("old.html"), "utf8")).toMatch(/<svg/);
    execFileSync("mkfifo", [at("report.fifo")]);
    const reader = spawn("cat", [at("report.fifo")], { stdio: ["ignore", "pipe", "inherit"] });
    const chunks: Buffer[] = [];
    reader.stdout.on("data", (d: Buffer) => chunks.push(d));
    const readerDone = new Promise((resolve) => reader.on("close", resolve));
    const toFifo = await run(["demo", "--size", "1M", "--report", at("report.fifo"), "-q"]);
    expect(toFifo.code, toFifo.stderr).toBe(0);
    await readerDone;
    expect(Buffer.concat(chunks).toString("utf8")).toMatch(/<svg/);
    expect(statSync(at("report.fifo")).isFIFO()).toBe(true);
  });

  it("a value the command line cannot use is a usage error with the way to the help", async () => {
    const result = await run(["encode", at("a.state"), "-o", at("never.mig"), "--page-size", "3"]);
    expect(result.code).toBe(1);
    expect(result.stderr).toBe("migstream: EINVAL: page size must be a power of two from 64 to 1048576, got 3\nsee migstream encode --help\n");
  });
});

describe("2. overwriting and modes", () => {
  it("refuses an existing output without -f (exit 1, file untouched), replaces it with -f keeping its mode", async () => {
    writeFileSync(at("secret.state"), "old secret");
    chmodSync(at("secret.state"), 0o440);
    const refused = await run(["decode", at("a.mig"), "-o", at("secret.state")]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toBe(`migstream: EEXIST: output ${at("secret.state")} exists\nhint: add -f to replace it (it keeps its mode)\n`);
    expect(readFileSync(at("secret.state"), "utf8")).toBe("old secret");
    const forced = await run(["decode", at("a.mig"), "-o", at("secret.state"), "-f"]);
    expect(forced.code, forced.stderr).toBe(0);
    expect(statSync(at("secret.state")).mode & 0o777).toBe(0o440);
    expect(readFileSync(at("secret.state")).equals(readFileSync(at("a.state")))).toBe(true);
  });

  it("creates new outputs 0600", async () => {
    const result = await run(["encode", at("a.state"), "-o", at("new.mig")]);
    expect(result.code, result.stderr).toBe(0);
    expect(statSync(at("new.mig")).mode & 0o777).toBe(0o600);
  });

  it("follows a symlink: its target is replaced, the link stays", async () => {
    writeFileSync(at("target.state"), "old");
    execFileSync("ln", ["-s", "target.state", at("link.state")]);
    const result = await run(["decode", at("a.mig"), "-o", at("link.state"), "-f"]);
    expect(result.code, result.stderr).toBe(0);
    expect(readFileSync(at("target.state")).length).toBe(SIZE);
    expect(
      execFileSync("readlink", [at("link.state")])
        .toString()
        .trim(),
    ).toBe("target.state");
  });

  it("refuses an output that is an input, even with -f", async () => {
    const before = readFileSync(at("a.mig"));
    const result = await run(["decode", at("a.mig"), "-o", at("a.mig"), "-f"]);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/^migstream: EINVAL: output .* is also an input/);
    expect(readFileSync(at("a.mig")).equals(before)).toBe(true);
  });

  it("checks the output's directory before any work, without naming the temporary file", async () => {
    const missing = await run(["encode", at("a.state"), "-o", at("nodir/y.mig")]);
    expect(missing.code).toBe(4);
    expect(missing.stderr).toMatch(/directory .*nodir does not exist/);
    expect(missing.stderr).not.toMatch(/migstream-tmp/);
    const isDir = await run(["encode", at("a.state"), "-o", scratch.dir]);
    expect(isDir.code).toBe(1);
    expect(isDir.stderr).toMatch(/^migstream: EISDIR: output .* is a directory\nhint: /);
  });
});

describe("3. every ending signal leaves nothing behind", () => {
  for (const [signal, code] of [
    ["SIGHUP", 129],
    ["SIGINT", 130],
    ["SIGTERM", 143],
  ] as const) {
    it(`${signal} during a decode from a slow stdin: exit ${code}, no temporary output, output untouched`, async () => {
      const out = at(`sig-${signal}.state`);
      writeFileSync(out, "previous");
      const bytes = readFileSync(at("a.mig"));
      const child = start(["decode", "-", "-o", out, "-f"]);
      const done = finished(child);
      child.stdin!.on("error", () => undefined);
      child.stdin!.write(bytes.subarray(0, bytes.length >> 1));
      const deadline = Date.now() + 30_000;
      while (tempFiles(scratch.dir).length === 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
      expect(tempFiles(scratch.dir).length).toBe(1);
      child.kill(signal);
      const result = await done;
      expect(result.code, result.stderr).toBe(code);
      expect(tempFiles(scratch.dir)).toEqual([]);
      expect(readFileSync(out, "utf8")).toBe("previous");
    });
  }

  it("SIGHUP while encode - spools stdin removes the spool", async () => {
    const tmp = tempDir();
    try {
      const child = start(["encode", "-", "-o", at("spooled.mig")], { env: { TMPDIR: tmp.dir } });
      const done = finished(child);
      child.stdin!.on("error", () => undefined);
      child.stdin!.write(readFileSync(at("a.state")).subarray(0, 1 << 20));
      const deadline = Date.now() + 30_000;
      while (readdirSync(tmp.dir).length === 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
      expect(readdirSync(tmp.dir).length).toBe(1);
      child.kill("SIGHUP");
      const result = await done;
      expect(result.code).toBe(129);
      expect(readdirSync(tmp.dir)).toEqual([]);
      expect(existsSync(at("spooled.mig"))).toBe(false);
    } finally {
      tmp.cleanup();
    }
  });
});

describe("4. errors with the way out", () => {
  it("a stream over --max-record: exit 2 with a --max-record hint; inspect shows the header", async () => {
    const encoded = await run(["encode", at("a.state"), "-o", at("big-records.mig"), "--max-record", "32M"]);
    expect(encoded.code, encoded.stderr).toBe(0);
    const verified = await run(["verify", at("big-records.mig")]);
    expect(verified.code).toBe(2);
    expect(verified.stderr).toMatch(/^migstream: E2BIG: .*\nhint: .*--max-record 32M\n$/);
    // From a file (read straight into the decoder, its start read again for the header) and
    // from stdin (its start kept on the way).
    const inspected = await run(["inspect", at("big-records.mig")]);
    const piped = await run(["inspect", "-"], { input: readFileSync(at("big-records.mig")) });
    for (const shown of [inspected, piped]) {
      expect(shown.code).toBe(2);
      expect(shown.stdout.toString()).toMatch(/max record 32\.0 MiB/);
      expect(shown.stderr).toMatch(/hint: .*--max-record 32M/);
    }
    const accepted = await run(["verify", at("big-records.mig"), "--max-record", "32M"]);
    expect(accepted.code, accepted.stderr).toBe(0);
  });

  it("a state over --max-state: a --max-state hint", async () => {
    const result = await run(["decode", at("a.mig"), "-o", at("never.state"), "--max-state", "1M"]);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/hint: .*--max-state 3M/);
    expect(existsSync(at("never.state"))).toBe(false);
  });

  it("verify of an incremental stream without --base: valid, exit 0, says it needs its base (as inspect does)", async () => {
    const result = await run(["verify", at("ab.mig")]);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stderr).toMatch(/incremental, its base not checked\nhint: give --base/);
    const json = await run(["verify", at("ab.mig"), "--json"]);
    expect(JSON.parse(json.stdout.toString())).toMatchObject({ command: "verify", valid: true, needsBase: true, baseChecked: false });
    const decode = await run(["decode", at("ab.mig"), "-o", at("nobase.state")]);
    expect(decode.code).toBe(3);
    expect(decode.stderr).toMatch(/hint: .*--base <snapshot>.*migstream apply/);
  });

  it("a usage error prints one line and where to read more", async () => {
    const result = await run(["encode", at("a.state")]);
    expect(result.code).toBe(1);
    expect(result.stderr).toBe("migstream: EINVAL: required option '-o, --output <stream>' not specified\nsee migstream encode --help\n");
  });

  it("diff of snapshots of different sizes exits 3", async () => {
    writeFileSync(at("short.state"), "short");
    const result = await run(["diff", at("short.state"), at("a.state"), "-o", at("never.mig")]);
    expect(result.code).toBe(3);
    expect(existsSync(at("never.mig"))).toBe(false);
  });

  it("- is stdin for apply's base and encode's snapshot; two stdins are refused", async () => {
    const applied = await run(["apply", "-", at("ab.mig"), "-o", at("applied.state")], { input: readFileSync(at("a.state")) });
    expect(applied.code, applied.stderr).toBe(0);
    expect(readFileSync(at("applied.state")).equals(readFileSync(at("b.state")))).toBe(true);
    const twice = await run(["encode", "-", "--base", "-", "-o", at("never2.mig")], { input: readFileSync(at("a.state")) });
    expect(twice.code).toBe(1);
    expect(twice.stderr).toMatch(/stdin cannot be both/);
  });

  it("decode - with stdin on a terminal refuses at once (script -qc gives it a terminal)", async () => {
    let hasScript = true;
    try {
      execFileSync("script", ["--version"], { stdio: "ignore" });
    } catch {
      hasScript = false;
    }
    if (!hasScript) return;
    const command = `${JSON.stringify(process.execPath)} ${JSON.stringify(CLI)} decode - -o ${JSON.stringify(at("tty.state"))}; echo "status=$?"`;
    const output = execFileSync("script", ["-qc", command, "/dev/null"], { env: { ...process.env, NO_PROGRESS: "1" }, timeout: 30_000, input: "" }).toString();
    expect(output).toMatch(/stdin is a terminal/);
    expect(output).toMatch(/status=1/);
  });
});

describe("on a real terminal (script -qc)", () => {
  const hasScript = ((): boolean => {
    try {
      execFileSync("script", ["--version"], { stdio: "ignore" });
      return true;
    } catch {
      return false;
    }
  })();
  const inTerminal = (command: string): string =>
    execFileSync("script", ["-qc", command, "/dev/null"], { env: { ...process.env, NO_PROGRESS: "", COLUMNS: "60" }, timeout: 60_000, input: "" }).toString();

  it.skipIf(!hasScript)("binary data to a terminal needs -f; the progress line is drawn and cleared", () => {
    const cli = `${JSON.stringify(process.execPath)} ${JSON.stringify(CLI)}`;
    const refused = inTerminal(`${cli} encode ${JSON.stringify(at("a.state"))} -o -; echo "status=$?"`);
    expect(refused).toMatch(/refusing to write binary data to a terminal/);
    expect(refused).toMatch(/hint: .*-f/);
    expect(refused).toMatch(/status=1/);
    const shown = inTerminal(`${cli} encode ${JSON.stringify(at("a.state"))} -o ${JSON.stringify(at("tty.mig"))}; echo "status=$?"`);
    expect(shown).toMatch(/status=0/);
    expect(shown).toMatch(/\rencode {2}[\d.]+ [KM]iB\/2\.0 MiB +\d+%/);
    expect(shown).toMatch(/\r\x1b\[Kencoded/);
  });
});

describe("5. --json errors", () => {
  it("are one object on stdout with the exit code's meaning", async () => {
    writeFileSync(at("garbage.mig"), "not a stream at all, definitely not");
    for (const command of [["verify"], ["inspect"]]) {
      const result = await run([...command, at("garbage.mig"), "--json"]);
      expect(result.code).toBe(2);
      const doc = JSON.parse(result.stdout.toString()) as { command: string; error: Record<string, unknown> };
      expect(doc.command).toBe(command[0]);
      expect(doc.error).toMatchObject({ code: "EBADMSG", recordIndex: 0, byteOffset: 0, exitCode: 2 });
      expect(typeof doc.error["message"]).toBe("string");
    }
  });

  it("successes share one shape: command, records with a total, rounds as an array, durationMs", async () => {
    const docs = await Promise.all([
      run(["encode", at("a.state"), "-o", at("schema.mig"), "--json"]),
      run(["decode", at("a.mig"), "-o", at("schema.state"), "--json"]),
      run(["verify", at("a.mig"), "--json"]),
      run(["inspect", at("a.mig"), "--json"]),
      run(["demo", "--size", "4M", "--json"]),
    ]);
    for (const [i, command] of ["encode", "decode", "verify", "inspect", "demo"].entries()) {
      expect(docs[i]!.code, docs[i]!.stderr).toBe(0);
      const doc = JSON.parse(docs[i]!.stdout.toString()) as Record<string, unknown>;
      expect(doc["command"]).toBe(command);
      expect(Array.isArray(doc["rounds"])).toBe(true);
      expect(typeof doc["bytes"]).toBe("number");
      expect(typeof doc["durationMs"]).toBe("number");
      if (command !== "demo") expect(doc["records"]).toMatchObject({ total: expect.any(Number), end: 1 });
      expect(doc).not.toHaveProperty("elapsedMs");
    }
  });

  it("send to nobody: an EIO error object on stdout, exit 4", async () => {
    const result = await run(["send", at("a.state"), "--to", "127.0.0.1:1", "--json"]);
    expect(result.code).toBe(4);
    expect(JSON.parse(result.stdout.toString())).toMatchObject({ command: "send", error: { code: "EIO", recordIndex: null, byteOffset: null } });
  });

  it("a usage error with --json is an error object too", async () => {
    const result = await run(["receive", "--listen", "0", "--json"]);
    expect(result.code).toBe(1);
    expect(JSON.parse(result.stdout.toString())).toMatchObject({ command: "receive", error: { code: "EINVAL", exitCode: 1 } });
  });
});

describe("6. progress on a terminal", () => {
  it("shows done/total, percentage and ETA fitted to the width, and clears the line (MIGSTREAM_FORCE_TTY)", async () => {
    const result = await run(["encode", at("a.state"), "-o", at("progress.mig")], { env: { NO_PROGRESS: "", MIGSTREAM_FORCE_TTY: "1", COLUMNS: "40" } });
    expect(result.code, result.stderr).toBe(0);
    const frames = result.stderr.split("\r").filter((f) => f.startsWith("encode"));
    expect(frames.length).toBeGreaterThan(0);
    for (const frame of frames) {
      const visible = frame.replace(/\x1b\[K/g, "");
      expect(visible.length).toBeLessThan(40);
    }
    expect(frames.some((f) => /MiB\/2\.0 MiB +\d+%/.test(f))).toBe(true);
    expect(result.stderr).toMatch(/\r\x1b\[Kencoded/);
    const wide = await run(["verify", at("a.mig")], { env: { NO_PROGRESS: "", MIGSTREAM_FORCE_TTY: "1", COLUMNS: "120" } });
    expect(wide.stderr).toMatch(/verify {2}.*%.*\/s.*ETA \d+:\d\d/);
    const off = await run(["verify", at("a.mig"), "--no-progress"], { env: { NO_PROGRESS: "", MIGSTREAM_FORCE_TTY: "1" } });
    expect(off.stderr).not.toMatch(/\r/);
  });
});
