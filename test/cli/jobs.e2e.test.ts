// --jobs through the real binary: the same stream bytes, decoded state and errors as --jobs 1.
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { randomBytes } from "node:crypto";
import { beforeAll, describe, expect, it } from "vitest";
import { makeState, run, tempFiles, useTestDir } from "./helpers.js";

// Several pool windows (16 MiB at 2 jobs) and decoder segments (4 MiB at 2 jobs).
const SIZE = 24 * 1024 * 1024 + 4096 * 3 + 123;

const scratch = useTestDir();
const { at } = scratch;

beforeAll(() => {
  writeFileSync(at("vm.state"), makeState(SIZE, 11));
});

describe("--jobs on the codec commands", () => {
  it("encode --jobs 2 writes the bytes of --jobs 1, with and without lz4", async () => {
    for (const compress of ["none", "lz4"]) {
      const [one, two] = await Promise.all([
        run(["encode", at("vm.state"), "-o", at(`one-${compress}.mig`), "--jobs", "1", "--compress", compress, "--json"], { timeoutMs: 120_000 }),
        run(["encode", at("vm.state"), "-o", at(`two-${compress}.mig`), "--jobs", "2", "--compress", compress, "--json"], { timeoutMs: 120_000 }),
      ]);
      expect(one.code, one.stderr).toBe(0);
      expect(two.code, two.stderr).toBe(0);
      expect(Buffer.compare(readFileSync(at(`one-${compress}.mig`)), readFileSync(at(`two-${compress}.mig`)))).toBe(0);
      const a = JSON.parse(one.stdout.toString());
      const b = JSON.parse(two.stdout.toString());
      expect(b.pages).toEqual(a.pages);
      expect(b.records).toEqual(a.records);
      expect(b.verified).toBe(true);
    }
  });

  it("decode and verify --jobs 2 give the state and the verdict of --jobs 1", async () => {
    const decoded = await run(["decode", at("two-lz4.mig"), "-o", at("decoded.state"), "--jobs", "2", "--json"], { timeoutMs: 120_000 });
    expect(decoded.code, decoded.stderr).toBe(0);
    expect(Buffer.compare(readFileSync(at("decoded.state")), readFileSync(at("vm.state")))).toBe(0);
    const [v1, v2] = await Promise.all([
      run(["verify", at("two-lz4.mig"), "--jobs", "1", "--json"]),
      run(["verify", at("two-lz4.mig"), "--jobs", "2", "--json"]),
    ]);
    expect(v2.code, v2.stderr).toBe(0);
    const strip = (r: { stdout: Buffer }) => {
      const { durationMs: _d, maxRssBytes: _m, throughput: _t, jobs: _j, ...rest } = JSON.parse(r.stdout.toString());
      return rest;
    };
    expect(strip(v2)).toEqual(strip(v1));
    expect([JSON.parse(v1.stdout.toString()).jobs, JSON.parse(v2.stdout.toString()).jobs]).toEqual([1, 2]);
  });

  it("a damaged stream: the same error, record and offset; no output left", async () => {
    // Late, and early: then most of the stream is still queued for the pool when it fails.
    for (const where of [0.7, 5000]) {
      const stream = readFileSync(at("two-lz4.mig"));
      stream[where < 1 ? Math.floor(stream.length * where) : where]! ^= 0x10;
      writeFileSync(at("damaged.mig"), stream);
      const results = await Promise.all(
        ["1", "2"].flatMap((jobs) => [
          run(["verify", at("damaged.mig"), "--jobs", jobs, "--json"]),
          run(["decode", at("damaged.mig"), "-o", at(`damaged-${jobs}.state`), "--jobs", jobs, "--json"]),
        ]),
      );
      for (const r of results) expect(r.code, r.stderr).toBe(2);
      const errors = results.map((r) => JSON.parse(r.stdout.toString()).error);
      expect(errors[0].code).toBe("EBADMSG");
      expect(errors[2]).toEqual(errors[0]);
      expect(errors[3]).toEqual(errors[1]);
      expect(tempFiles(scratch.dir)).toEqual([]);
    }
  });

  it("apply --jobs 2 of a diff stream (DELTA records) writes the state of --jobs 1", async () => {
    const next = readFileSync(at("vm.state"));
    for (const page of [3, 700, 701, 5000]) next.write("changed bytes", page * 4096 + 100);
    next.fill(0x5a, 4096 * 2000, 4096 * 2010);
    writeFileSync(at("vm2.state"), next);
    const diff = await run(["diff", at("vm.state"), at("vm2.state"), "-o", at("vm.diff"), "--jobs", "2"], { timeoutMs: 120_000 });
    expect(diff.code, diff.stderr).toBe(0);
    const applied = (jobs: string) =>
      run(["apply", at("vm.state"), at("vm.diff"), "-o", at(`applied-${jobs}.state`), "--jobs", jobs, "--json"], { timeoutMs: 120_000 });
    const [one, two] = await Promise.all([applied("1"), applied("2")]);
    expect(one.code, one.stderr).toBe(0);
    expect(two.code, two.stderr).toBe(0);
    expect(JSON.parse(two.stdout.toString()).pages.delta).toBeGreaterThan(0);
    expect(Buffer.compare(readFileSync(at("applied-2.state")), next)).toBe(0);
    expect(Buffer.compare(readFileSync(at("applied-1.state")), next)).toBe(0);
  });

  it("without --jobs: the cores for inputs of 64 MiB or more, but one thread for small ones and for encode without lz4", async () => {
    const cores = Math.min(8, availableParallelism());
    // Over 64 MiB of data, so that its streams are that large too (the default goes by the
    // input's size: the state for encode, the stream for decode and verify).
    // Random bytes: no page is zero or compressible, so every stream of it is as large.
    const big = randomBytes(64 * 1024 * 1024 + 4096);
    writeFileSync(at("big.state"), big);
    const jobsOf = async (args: string[]): Promise<number> => {
      const r = await run([...args, "--json"], { timeoutMs: 120_000 });
      expect(r.code, r.stderr).toBe(0);
      return JSON.parse(r.stdout.toString()).jobs;
    };
    expect(await jobsOf(["encode", at("big.state"), "-o", at("big.mig"), "--compress", "lz4"])).toBe(cores);
    expect(await jobsOf(["encode", at("big.state"), "-o", at("big-raw.mig")])).toBe(1);
    expect(await jobsOf(["verify", at("big-raw.mig")])).toBe(cores);
    expect(await jobsOf(["decode", at("big.mig"), "-o", at("big-decoded.state")])).toBe(cores);
    expect(Buffer.compare(readFileSync(at("big-decoded.state")), big)).toBe(0);
    // Under 64 MiB (this test's 24 MiB stream), and stdin (no size known): one thread.
    expect(await jobsOf(["verify", at("two-lz4.mig")])).toBe(1);
    expect(await jobsOf(["encode", at("vm.state"), "-o", at("small.mig"), "--compress", "lz4"])).toBe(1);
    const piped = await run(["verify", "-", "--json"], { input: readFileSync(at("big.mig")), timeoutMs: 120_000 });
    expect(piped.code, piped.stderr).toBe(0);
    expect(JSON.parse(piped.stdout.toString()).jobs).toBe(1);
  });

  it("refuses a bad --jobs as a usage error", async () => {
    for (const jobs of ["0", "65", "two", "1.5"]) {
      const r = await run(["verify", at("two-lz4.mig"), "--jobs", jobs]);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain("--jobs must be an integer from 1 to 64");
    }
    // diff encodes on one thread, and still refuses a bad value, before writing anything.
    const diff = await run(["diff", at("vm.state"), at("vm.state"), "-o", at("refused.diff"), "--jobs", "0"]);
    expect(diff.code).toBe(1);
    expect(existsSync(at("refused.diff"))).toBe(false);
  });
});
