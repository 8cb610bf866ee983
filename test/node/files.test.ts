// The file layer: streams applied at their offsets in a temporary file, renamed only once the
// stream verified; snapshots encoded from files in bounded windows.
import { closeSync, mkdtempSync, openSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { StreamEncoder } from "../../src/codec/encoder.js";
import { encodeSnapshot } from "../../src/codec/snapshot.js";
import { decodeToFile, encodeFile, inspectStream, StreamFile } from "../../src/node/files.js";

const dir = mkdtempSync(join(tmpdir(), "migstream-files-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function pattern(size: number, seed: number): Uint8Array {
  const out = new Uint8Array(size);
  let x = seed | 1;
  for (let i = 0; i < size; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

/**
 * A snapshot file of more than one pool window (16 MiB at 2 threads) and a partial last page,
 * pages [from, to) zero if given.
 */
function snapshotFile(name: string, seed: number, zeros?: [number, number]): { state: Uint8Array; path: string } {
  const state = pattern(29 * 1024 * 1024 + 300, seed);
  if (zeros) state.fill(0, zeros[0], zeros[1]);
  const path = join(dir, name);
  writeFileSync(path, state);
  return { state, path };
}

async function decodeFile(stream: Uint8Array, name: string, base?: string): Promise<Uint8Array> {
  const out = join(dir, name);
  await decodeToFile([stream], out, base === undefined ? {} : { base });
  return readFileSync(out);
}

describe("decodeToFile", () => {
  it("writes exactly the state when the last page is partial and all zero", async () => {
    const state = new Uint8Array(5000);
    const decoded = await decodeFile(encodeSnapshot(state), "zero-tail.state");
    expect(decoded.length).toBe(5000);
    expect(Buffer.from(decoded).equals(state)).toBe(true);
  });

  it("applies a delta to a partial last page (a pre-copy stream sent it twice)", async () => {
    const size = 3 * 4096 + 904;
    const first = pattern(size, 1);
    const second = first.slice();
    second.fill(9, size - 100, size - 90); // only the partial last page changes
    const shadow = new Uint8Array(size);
    const chunks: Uint8Array[] = [];
    const encoder = new StreamEncoder({ size, ondata: (c) => chunks.push(c) });
    encoder.writePages(0, 0, first, { shadow, updateShadow: true, delta: false, skipClean: false });
    encoder.endRound(100);
    encoder.writePages(0, 0, second, { shadow, updateShadow: true });
    expect(encoder.summary().pages.delta).toBe(1);
    encoder.end();
    const decoded = await decodeFile(Buffer.concat(chunks), "delta-tail.state");
    expect(Buffer.from(decoded).equals(second)).toBe(true);
  });

  it("applies a DELTA record covering more pages than one batch, onto a base file", async () => {
    // One changed byte per 1 KiB page: each page codes to a few bytes, so one record of the
    // default 1 MiB payload covers many thousand pages.
    const size = 24 << 20;
    const base = pattern(size, 7);
    const next = base.slice();
    for (let p = 0; p < size; p += 1024) next[p + 5] = next[p + 5]! ^ 0xff;
    const stream = encodeSnapshot(next, { base, pageSize: 1024 });
    const report = await inspectStream([stream]);
    expect(report.summary.records.delta).toBeGreaterThan(0);
    expect(report.summary.pages.delta / report.summary.records.delta).toBeGreaterThan(4096);
    writeFileSync(join(dir, "base.state"), base);
    const decoded = await decodeFile(stream, "applied.state", join(dir, "base.state"));
    expect(Buffer.from(decoded).equals(next)).toBe(true);
  });

  it("leaves nothing behind when the stream is corrupt", async () => {
    const stream = encodeSnapshot(pattern(100_000, 3)).slice();
    stream[stream.length - 40]! ^= 1;
    await expect(decodeToFile([stream], join(dir, "never.state"))).rejects.toMatchObject({ code: "EBADMSG" });
    expect(readdirSync(dir).filter((f) => f.includes("never"))).toEqual([]);
  });
});

describe("encodeFile", () => {
  it("encodes a file into the same stream as encodeSnapshot, and incrementally against a base file", async () => {
    const state = pattern(9 << 20, 11);
    const base = state.slice();
    base.fill(0, 1 << 20, 2 << 20);
    writeFileSync(join(dir, "e.state"), state);
    writeFileSync(join(dir, "e.base"), base);
    const full: Uint8Array[] = [];
    await encodeFile(join(dir, "e.state"), (c) => void full.push(c));
    expect(Buffer.concat(full).equals(encodeSnapshot(state))).toBe(true);
    const incremental: Uint8Array[] = [];
    await encodeFile(join(dir, "e.state"), (c) => void incremental.push(c), { base: join(dir, "e.base") });
    expect(Buffer.concat(incremental).equals(encodeSnapshot(state, { base }))).toBe(true);
  });
});

describe("encodeFile on the pool", () => {
  it("hands every byte of the snapshot to onwindow once, in order, though windows start again at open records", async () => {
    // Two of the pool's windows (16 MiB for 2 threads), with raw records open at their ends.
    const { state, path } = snapshotFile("windows.state", 77, [5 << 20, 6 << 20]);
    const seen: Uint8Array[] = [];
    const parts: Uint8Array[] = [];
    await encodeFile(
      path,
      (chunk) => {
        parts.push(chunk.slice());
      },
      { jobs: 2, compress: "lz4", onwindow: (view) => seen.push(view.slice()) },
    );
    expect(Buffer.compare(Buffer.concat(seen), state)).toBe(0);
    expect(Buffer.compare(Buffer.concat(parts), encodeSnapshot(state, { compress: "lz4" }))).toBe(0);
  });

  it("lends the threads' records to write uncopied, and reuses none of them before its release", async () => {
    const { state, path } = snapshotFile("lend.state", 79, [3 << 20, 7 << 20]);
    const parts: Uint8Array[] = [];
    let lent = 0;
    let changed = 0;
    /** Chunks handed over and not released yet, with what they held then. */
    const held = new Map<Uint8Array, Uint8Array>();
    const check = (): void => {
      for (const [chunk, copy] of held) if (Buffer.compare(chunk, copy) !== 0) changed++;
    };
    await encodeFile(
      path,
      (chunk, release) => {
        check();
        const copy = chunk.slice();
        parts.push(copy);
        if (chunk.buffer instanceof SharedArrayBuffer) lent++;
        // Released later, as a socket would once the system took it: until then its bytes must
        // stay as they were, while the encode goes on (the next window's chunks are encoded
        // and written meanwhile unless the encoder waits).
        held.set(chunk, copy);
        setTimeout(() => {
          check();
          held.delete(chunk);
          release();
        }, 100);
      },
      { jobs: 2, compress: "lz4", lend: true },
    );
    expect(lent).toBeGreaterThan(8);
    expect(changed).toBe(0);
    expect(Buffer.compare(Buffer.concat(parts), encodeSnapshot(state, { compress: "lz4" }))).toBe(0);
  });

  it("a write that fails: encodeFile rejects only after the lent chunks write took were released", async () => {
    const { path } = snapshotFile("lend-fail.state", 81);
    let calls = 0;
    let taken = 0;
    let released = 0;
    const failed = encodeFile(
      path,
      (chunk, release) => {
        if (++calls === 5) throw new Error("the output broke");
        if (chunk.buffer instanceof SharedArrayBuffer) {
          taken++;
          // Held a while, as a socket's queue would: the pool's memory must stay until then.
          setTimeout(() => {
            released++;
            release();
          }, 50);
        } else release();
      },
      { jobs: 2, compress: "lz4", lend: true },
    );
    await expect(failed).rejects.toThrow("the output broke");
    expect(taken).toBeGreaterThan(1);
    expect(released).toBe(taken);
  });

  it("copies what it hands to write unless asked to lend (a chunk kept, never released, stays as it was)", async () => {
    const { state, path } = snapshotFile("kept.state", 80);
    const parts: Uint8Array[] = [];
    await encodeFile(path, (chunk) => void parts.push(chunk), { jobs: 2, compress: "lz4" });
    expect(parts.some((chunk) => chunk.buffer instanceof SharedArrayBuffer)).toBe(false);
    expect(Buffer.compare(Buffer.concat(parts), encodeSnapshot(state, { compress: "lz4" }))).toBe(0);
  });
});

describe("encodeFile on the pool, a file that changes while it is read", () => {
  it("onwindow sees the bytes the stream carries, not those of a read the stream did not use", async () => {
    const { path } = snapshotFile("changing.state", 78);
    const seen: Uint8Array[] = [];
    const parts: Uint8Array[] = [];
    let calls = 0;
    await encodeFile(path, (chunk) => void parts.push(chunk.slice()), {
      jobs: 2,
      compress: "lz4",
      onwindow: (view) => {
        seen.push(view.slice());
        // After the first window: the first page it did not hand over changes on disk. The
        // first window ends inside a record, so the second reads that page again.
        if (calls++ === 0) {
          const fd = openSync(path, "r+");
          writeSync(fd, new Uint8Array(4096).fill(0xab), 0, 4096, view.length);
          closeSync(fd);
        }
      },
    });
    const out = join(dir, "changing.out");
    await decodeToFile([Buffer.concat(parts)], out);
    expect(Buffer.compare(Buffer.concat(seen), readFileSync(out))).toBe(0);
  });
});

describe("StreamFile", () => {
  /** Files this process has open under the test's directory (Linux). */
  const openHere = (): string[] =>
    readdirSync("/proc/self/fd")
      .map((fd) => {
        try {
          return readlinkSync(`/proc/self/fd/${fd}`);
        } catch {
          return "";
        }
      })
      .filter((target) => target.startsWith(dir));
  // Several windows of the one-thread decoder (4 MiB) and several pool segments.
  const state = pattern(9 * 1024 * 1024 + 777, 41);
  state.fill(0, 1 << 20, 3 << 20);
  const stream = encodeSnapshot(state, { compress: "lz4", maxRecordPayload: 256 * 1024 });

  it("decodes like chunks, on one thread and on the pool, and closes its file", async () => {
    const path = join(dir, "whole.mig");
    writeFileSync(path, stream);
    for (const jobs of [1, 2]) {
      const out = join(dir, `from-file-${jobs}.state`);
      const summary = await decodeToFile(new StreamFile(path), out, { jobs });
      expect(Buffer.compare(readFileSync(out), state)).toBe(0);
      expect(summary.bytes).toBe(stream.length);
    }
    expect(openHere()).toEqual([]);
  });

  it("a truncated or damaged file: the error of chunks (code, record, offset), the file closed", async () => {
    const cuts = [10, 100, Math.floor(stream.length / 3), stream.length - 1];
    for (const [name, bytes] of [
      ...cuts.map((cut) => [`cut-${cut}`, stream.subarray(0, cut)] as const),
      ["flipped", Uint8Array.from(stream, (b, i) => (i === Math.floor(stream.length * 0.6) ? b ^ 4 : b))] as const,
    ]) {
      const path = join(dir, `${name}.mig`);
      writeFileSync(path, bytes);
      const expected = await inspectStream([bytes.slice()]);
      expect(expected.problem, name).toBeDefined();
      for (const jobs of [1, 2]) {
        const found = await inspectStream(new StreamFile(path), {}, { jobs });
        expect([found.problem?.code, found.problem?.message], `${name}, jobs ${jobs}`).toEqual([expected.problem?.code, expected.problem?.message]);
        await expect(decodeToFile(new StreamFile(path), join(dir, `${name}-${jobs}.state`), { jobs })).rejects.toMatchObject({
          code: expected.problem?.code,
          message: expected.problem?.message,
        });
      }
    }
    expect(openHere()).toEqual([]);
    expect(readdirSync(dir).filter((f) => f.includes("migstream-tmp"))).toEqual([]);
  });

  it("stops at an abort with ECANCELED; a missing file is EIO naming the cause", async () => {
    const path = join(dir, "aborted.mig");
    writeFileSync(path, stream);
    const controller = new AbortController();
    controller.abort();
    await expect(decodeToFile(new StreamFile(path), join(dir, "aborted.state"), { signal: controller.signal })).rejects.toMatchObject({ code: "ECANCELED" });
    await expect(decodeToFile(new StreamFile(join(dir, "missing.mig")), join(dir, "missing.state"))).rejects.toMatchObject({
      code: "EIO",
      message: expect.stringContaining("no such file"),
    });
    expect(openHere()).toEqual([]);
  });
});
