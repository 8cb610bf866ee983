// The worker pool against one thread: streams encoded with jobs N are the bytes of jobs 1, and
// decoding or verifying with jobs N gives the same state, summary and (for damaged streams) the
// same error, code, record index and byte offset. Small chunks and parts make every window
// carry, chunk cut and segment rotation happen on small states.
import { fc, test } from "@fast-check/vitest";
import { afterAll, describe, expect, it } from "vitest";
import { type DataRecord, type DecodeTarget, StreamDecoder } from "../../src/codec/decoder.js";
import { StreamEncoder } from "../../src/codec/encoder.js";
import { encodeRegionParallel } from "../../src/codec/parallel-encode.js";
import { ParallelDecoder } from "../../src/codec/parallel-decode.js";
import { decodeSnapshot, encodeSnapshot, encodeSnapshotWithSummary } from "../../src/codec/snapshot.js";
import { decodeSnapshotAsync, encodeSnapshotAsync } from "../../src/codec/parallel-snapshot.js";
import { MigrationError } from "../../src/core/errors.js";
import { checkJobs, createPool, WorkerPool } from "../../src/core/pool/pool.js";
import { scanHashOnPool } from "../../src/core/pool/scan.js";
import { scanHash } from "../../src/core/scan.js";
import { TAG_PAGES, TAG_ZERO } from "../../src/format/constants.js";
import { recordChecksum, splitStream } from "./stream-builder.js";
import { concatBytes } from "../../src/core/bytes.js";

/** Flips a bit in record `index`'s payload and makes its checksum right again. */
function damagePayload(stream: Uint8Array, index: number, where: number, bit: number, alg: "xxh3" | "crc32c"): void {
  const data = splitStream(stream).records.filter((r) => r.tag <= 4 && r.length > 0);
  const r = data[index % Math.max(1, data.length)];
  if (!r) return;
  r.payload[Math.floor(where * r.length)]! ^= 1 << bit;
  const sum = recordChecksum(r.bytes.subarray(0, r.bytes.length - 8), alg);
  new DataView(stream.buffer, stream.byteOffset + r.at + r.bytes.length - 8).setBigUint64(0, sum, true);
}

const pools = new Map<number, WorkerPool>();
function pool(jobs: number): WorkerPool {
  let p = pools.get(jobs);
  if (!p || p.closed) {
    p = new WorkerPool(jobs);
    pools.set(jobs, p);
  }
  return p;
}
afterAll(() => {
  for (const p of pools.values()) p.close();
});

/** A state of runs of pages: zero, random, a repeated pattern (compressible), text. */
function buildState(runs: Array<{ kind: number; pages: number }>, pageSize: number, tail: number, seed: number): Uint8Array {
  const pages = runs.reduce((n, r) => n + r.pages, 0);
  const state = new Uint8Array(pages * pageSize + tail);
  let x = seed >>> 0 || 1;
  const next = (): number => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
  let at = 0;
  runs.forEach((run, i) => {
    const end = i === runs.length - 1 ? state.length : at + run.pages * pageSize;
    if (run.kind === 1) for (let b = at; b < end; b++) state[b] = next() & 0xff;
    else if (run.kind === 2) for (let b = at; b < end; b++) state[b] = (b % 7) * 31;
    else if (run.kind === 3) for (let b = at; b < end; b += 11) state[b] = 65 + (next() % 26);
    at = end;
  });
  return state;
}

const stateArb = fc.record({
  runs: fc.array(fc.record({ kind: fc.integer({ min: 0, max: 3 }), pages: fc.integer({ min: 1, max: 40 }) }), { minLength: 1, maxLength: 12 }),
  pageSize: fc.constantFrom(256, 1024, 4096),
  recordPages: fc.constantFrom(1, 2, 5, 16),
  tail: fc.constantFrom(0, 0, 100),
  compress: fc.boolean(),
  checksum: fc.constantFrom("xxh3" as const, "crc32c" as const),
  jobs: fc.constantFrom(2, 3),
  chunkPages: fc.constantFrom(1, 3, 8),
  seed: fc.integer({ min: 1, max: 2 ** 31 }),
});

async function encodeOnPool(
  state: Uint8Array,
  p: WorkerPool,
  o: { pageSize: number; maxRecordPayload: number; compress: boolean; checksum: "xxh3" | "crc32c"; chunkBytes: number },
  summaries?: unknown[],
): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  const encoder = new StreamEncoder({
    size: state.length,
    pageSize: o.pageSize,
    maxRecordPayload: o.maxRecordPayload,
    checksum: o.checksum,
    compress: o.compress ? "lz4" : "none",
    ondata: (chunk) => parts.push(chunk),
  });
  await encodeRegionParallel(
    p,
    encoder,
    { size: state.length, read: (at, into) => into.set(state.subarray(at, at + into.length)) },
    { ...o, chunkBytes: o.chunkBytes },
  );
  encoder.writeConfig(new Uint8Array([1, 2, 3]));
  encoder.end();
  summaries?.push(encoder.summary());
  return concatBytes(parts);
}

describe("encode on the pool", () => {
  test.prop([stateArb], { seed: 0x20b1, numRuns: 40 })("is byte-identical to one thread", async (a) => {
    const state = buildState(a.runs, a.pageSize, a.tail, a.seed);
    const options = { pageSize: a.pageSize, maxRecordPayload: a.recordPages * a.pageSize, compress: a.compress, checksum: a.checksum };
    const { stream: serial, summary } = encodeSnapshotWithSummary(state, {
      ...options,
      compress: a.compress ? "lz4" : "none",
      config: new Uint8Array([1, 2, 3]),
    });
    const summaries: unknown[] = [];
    const parallel = await encodeOnPool(state, pool(a.jobs), { ...options, chunkBytes: a.chunkPages * a.pageSize }, summaries);
    expect(parallel.length).toBe(serial.length);
    expect(Buffer.compare(parallel, serial)).toBe(0);
    // The counts too (pages by kind, records, LZ4 bytes).
    expect(summaries[0]).toEqual(summary);
  });

  it("an empty state gives the empty stream", async () => {
    const o = { pageSize: 4096, maxRecordPayload: 65536, compress: true, checksum: "xxh3" as const, chunkBytes: 4096 };
    const serial = encodeSnapshot(new Uint8Array(0), { compress: "lz4", maxRecordPayload: 65536, config: new Uint8Array([1, 2, 3]) });
    expect(Buffer.compare(await encodeOnPool(new Uint8Array(0), pool(2), o), serial)).toBe(0);
  });
});

/** Applies records into a plain array; remembers the config and the summary. */
class ArrayTarget implements DecodeTarget {
  state = new Uint8Array(0);
  committed = false;
  #pageSize = 0;
  open(header: { totalSize: number; pageSize: number }) {
    this.state = new Uint8Array(header.totalSize);
    this.#pageSize = header.pageSize;
    return undefined;
  }
  apply(r: DataRecord): void {
    if (r.tag === TAG_PAGES) this.state.set(r.payload, r.offset);
    else if (r.tag === TAG_ZERO) this.state.fill(0, r.offset, Math.min(this.state.length, r.offset + r.pages * this.#pageSize));
  }
  commit(): void {
    this.committed = true;
  }
  abort(): void {}
}

type Outcome = {
  error?: { code: string; message: string; recordIndex: number | undefined; byteOffset: number | undefined };
  state?: Uint8Array;
  summary?: unknown;
};

function outcomeOf(error: unknown, target: ArrayTarget, summary: () => unknown): Outcome {
  if (error === undefined) return { state: target.state, summary: summary() };
  if (!(error instanceof MigrationError)) throw error;
  return { error: { code: error.code, message: error.message, recordIndex: error.recordIndex, byteOffset: error.byteOffset } };
}

function decodeSerial(stream: Uint8Array, chunk: number): Outcome {
  const target = new ArrayTarget();
  const decoder = new StreamDecoder(target, { maxRecordPayload: 1 << 20 });
  let error: unknown;
  try {
    for (let at = 0; at < stream.length; at += chunk) decoder.push(stream.subarray(at, at + chunk));
    decoder.end();
  } catch (e) {
    error = e;
  }
  return outcomeOf(error, target, () => decoder.summary());
}

/**
 * The pool's decoder over `stream`, fed `chunk` bytes at a time: pushed, or (`feed` "pushFrom")
 * read straight into pool memory as a file is, each read at most `chunk` bytes.
 */
async function decodeParallel(
  stream: Uint8Array,
  chunk: number,
  p: WorkerPool,
  partBytes: number,
  payloads = true,
  feed: "push" | "pushFrom" = "push",
): Promise<Outcome> {
  const target = new ArrayTarget();
  const decoder = new ParallelDecoder(p, target, { maxRecordPayload: 1 << 20 }, payloads, partBytes);
  let error: unknown;
  try {
    if (feed === "push") for (let at = 0; at < stream.length; at += chunk) await decoder.push(stream.subarray(at, at + chunk));
    else {
      let at = 0;
      await decoder.pushFrom((into) => {
        const n = Math.min(into.length, chunk, stream.length - at);
        into.set(stream.subarray(at, at + n));
        at += n;
        return n;
      });
    }
    await decoder.end();
  } catch (e) {
    error = e;
    await decoder.abort();
  }
  return outcomeOf(error, target, () => decoder.summary());
}

describe("decode on the pool", () => {
  const damageArb = fc.record({
    state: stateArb,
    damage: fc.constantFrom("none", "flip", "truncate", "flip-payload"),
    where: fc.double({ min: 0, max: 1, noNaN: true }),
    bit: fc.integer({ min: 0, max: 7 }),
    chunk: fc.constantFrom(1000, 4096, 65536, 1 << 20),
    partBytes: fc.constantFrom(512, 4096, 32768),
    feed: fc.constantFrom("push" as const, "pushFrom" as const),
  });

  test.prop([damageArb], { seed: 0x20d3, numRuns: 30 })("gives the state, summary or error of one thread", async (a) => {
    const s = a.state;
    const state = buildState(s.runs, s.pageSize, s.tail, s.seed);
    const stream = encodeSnapshot(state, {
      pageSize: s.pageSize,
      maxRecordPayload: s.recordPages * s.pageSize,
      checksum: s.checksum,
      compress: s.compress ? "lz4" : "none",
    }).slice();
    let damaged = stream;
    const at = Math.floor(a.where * stream.length);
    if (a.damage === "truncate") damaged = stream.subarray(0, at);
    else if (a.damage === "flip") damaged[at] = damaged[at]! ^ (1 << a.bit);
    else if (a.damage === "flip-payload") {
      // Inside a payload, with the record's checksum made right again: only the LZ4 block
      // (or the page bytes) is wrong, so the block decoder's own verdict must match.
      damagePayload(damaged, at, a.where, a.bit, s.checksum);
    }
    const serial = decodeSerial(damaged, a.chunk);
    const parallel = await decodeParallel(damaged, a.chunk, pool(s.jobs), a.partBytes, true, a.feed);
    expect(parallel).toEqual(serial);
    if (a.damage === "none") expect(Buffer.compare(parallel.state!, state)).toBe(0);
  });

  it("a record that claims more than the largest payload, read from a file: the error of one thread", async () => {
    const state = buildState([{ kind: 1, pages: 64 }], 4096, 0, 5);
    const stream = encodeSnapshot(state, { maxRecordPayload: 8192 }).slice();
    const fifth = splitStream(stream).records[5]!;
    // Its payload length: the stream stops framing there, and the rest goes to the decoder as
    // it is read.
    new DataView(stream.buffer, stream.byteOffset + fifth.at + 4).setUint32(0, 0x7fff0000, true);
    const serial = decodeSerial(stream, 1000);
    expect(serial.error).toBeDefined();
    for (const partBytes of [512, 32768]) expect(await decodeParallel(stream, 1000, pool(2), partBytes, true, "pushFrom")).toEqual(serial);
  });

  it("keeps a segment's precheck entries inside its own tables, wherever the allocator put them", async () => {
    // The parts' entries are moved together behind the first part's: with each part's table
    // allocated on its own, a table-sized hole before someone else's block let them overflow
    // into it (found in review: 278,635 bytes of the block overwritten).
    const p = new WorkerPool(4);
    try {
      await p.ready();
      const pageSize = 64;
      const pages = 40000;
      const state = new Uint8Array(pages * pageSize);
      // Every other page not zero: a record per page (zero or not), many entries per part.
      for (let i = 1; i < pages; i += 2) state[i * pageSize] = 1 + (i % 200);
      const stream = encodeSnapshot(state, { pageSize });
      const partBytes = 512;
      const maxRecordPayload = 1 << 20;
      const segCap = 4 * partBytes + 65536 + maxRecordPayload + 32;
      const tableCap = (Math.ceil(Math.ceil(segCap / 4) / 32) + 2) * 32;
      const c = p.core;
      const hole = c.alloc(tableCap);
      const foreign = c.alloc(1 << 20);
      c.u8.fill(0xab, foreign, foreign + (1 << 20));
      c.free(hole);
      let records = 0;
      const target: DecodeTarget = { open: () => undefined, apply: () => void records++, commit: () => undefined, abort: () => undefined };
      const decoder = new ParallelDecoder(p, target, { maxRecordPayload }, false, partBytes);
      await decoder.push(stream);
      await decoder.end();
      expect(records).toBe(pages);
      expect(c.u8.subarray(foreign, foreign + (1 << 20)).every((b) => b === 0xab)).toBe(true);
      c.free(foreign);
    } finally {
      p.close();
    }
  });

  it("reports a malformed LZ4 block behind a valid checksum like one thread", async () => {
    const state = buildState([{ kind: 2, pages: 64 }], 4096, 0, 7);
    const stream = encodeSnapshot(state, { compress: "lz4", checksum: "crc32c" }).slice();
    const first = splitStream(stream).records[0]!;
    expect(first.tag).toBe(4);
    // The block's first token claims more literals than the block holds.
    first.payload[4] = 0xff;
    first.payload[5] = 0xff;
    const sum = recordChecksum(first.bytes.subarray(0, first.bytes.length - 8), "crc32c");
    new DataView(stream.buffer, first.at + first.bytes.length - 8).setBigUint64(0, sum, true);
    const serial = decodeSerial(stream, 1 << 20);
    expect(serial.error?.code).toBe("EBADMSG");
    expect(await decodeParallel(stream, 1 << 20, pool(2), 4096)).toEqual(serial);
    expect(await decodeParallel(stream, 1 << 20, pool(2), 4096, false)).toEqual(serial);
  });
});

describe("encodeSnapshotAsync / decodeSnapshotAsync", () => {
  test.prop([stateArb, fc.integer({ min: 1, max: 3 })], { seed: 0x20e7, numRuns: 15 })("match the one-thread functions, regions and all", async (a, cut) => {
    const state = buildState(a.runs, a.pageSize, a.tail, a.seed);
    // Up to three regions, cut at page boundaries (only the last may end in a partial page).
    const pages = Math.floor(state.length / a.pageSize);
    const bounds = [0, ...Array.from({ length: cut - 1 }, (_, i) => Math.floor((pages * (i + 1)) / cut) * a.pageSize), state.length];
    const regions = bounds.slice(1).map((end, i) => ({ name: `r${i}`, size: end - bounds[i]! }));
    const options = {
      regions,
      pageSize: a.pageSize,
      maxRecordPayload: a.recordPages * a.pageSize,
      checksum: a.checksum,
      compress: a.compress ? ("lz4" as const) : ("none" as const),
    };
    const serial = encodeSnapshot(state, options);
    const parallel = await encodeSnapshotAsync(state, { ...options, pool: pool(a.jobs) });
    expect(Buffer.compare(parallel, serial)).toBe(0);
    const decoded = await decodeSnapshotAsync(parallel, { pool: pool(a.jobs) });
    expect(Buffer.compare(decoded, decodeSnapshot(serial))).toBe(0);
  });

  it("start and close a pool of their own with jobs", async () => {
    const state = buildState(
      [
        { kind: 3, pages: 100 },
        { kind: 0, pages: 50 },
      ],
      4096,
      0,
      9,
    );
    const stream = await encodeSnapshotAsync(state, { jobs: 2, compress: "lz4" });
    expect(Buffer.compare(stream, encodeSnapshot(state, { compress: "lz4" }))).toBe(0);
    expect(Buffer.compare(await decodeSnapshotAsync(stream, { jobs: 2 }), state)).toBe(0);
    await expect(decodeSnapshotAsync(stream.subarray(0, stream.length - 1), { jobs: 2 })).rejects.toMatchObject({ code: "ENODATA" });
  });
});

describe("hash scan on the pool", () => {
  test.prop(
    [
      fc.record({
        pages: fc.integer({ min: 0, max: 300 }),
        tail: fc.constantFrom(0, 17),
        pageSize: fc.constantFrom(64, 4096),
        changed: fc.double({ min: 0, max: 1, noNaN: true }),
        jobs: fc.constantFrom(2, 3),
        seed: fc.integer({ min: 1, max: 2 ** 31 }),
      }),
    ],
    { seed: 0x20a5, numRuns: 25 },
  )("finds the pages and writes the hashes of one thread", async (a) => {
    const p = pool(a.jobs);
    const length = a.pages * a.pageSize + (a.pages > 0 ? a.tail : 0);
    const pages = Math.ceil(length / a.pageSize);
    const c = p.core;
    const ptrs = [c.alloc(Math.max(1, length)), c.alloc(Math.max(8, pages * 8)), c.alloc(Math.max(1, Math.ceil(pages / 8)))];
    try {
      const view = (i: number, n: number) => new Uint8Array(c.memory.buffer, ptrs[i]!, n);
      const data = view(0, length);
      const old = buildState([{ kind: 1, pages: pages + 1 }], a.pageSize, 0, a.seed).subarray(0, length);
      data.set(old);
      const hashes = view(1, pages * 8);
      // Hashes of the old content; then some pages change.
      const serialHashes = new Uint8Array(pages * 8);
      scanHash(old.slice(), a.pageSize, serialHashes);
      hashes.set(serialHashes);
      for (let pg = 0; pg < pages; pg++) if ((pg * 2654435761) % 1000 < a.changed * 1000) data[pg * a.pageSize] = data[pg * a.pageSize]! ^ 0x5a;
      const serial = scanHash(data.slice(), a.pageSize, serialHashes);
      const bitmap = view(2, Math.ceil(pages / 8));
      const count = await scanHashOnPool(p, data, a.pageSize, hashes, bitmap);
      expect(count).toBe(serial.count);
      expect(Buffer.compare(bitmap, serial.bitmap)).toBe(0);
      expect(Buffer.compare(hashes, serialHashes)).toBe(0);
    } finally {
      for (const ptr of ptrs) c.free(ptr);
    }
  });

  it("refuses views outside the pool's memory", async () => {
    await expect(scanHashOnPool(pool(2), new Uint8Array(4096), 4096, new Uint8Array(8), new Uint8Array(1))).rejects.toMatchObject({ code: "EINVAL" });
  });
});

/** Encoder options of the failure tests: LZ4, records of 64 KiB, chunks of 128 KiB (many tasks). */
const SMALL_CHUNKS = { pageSize: 4096, maxRecordPayload: 65536, checksum: "xxh3", compress: true, chunkBytes: 131072 } as const;

/** Counts the tasks `pool` is given and those that settled (success or failure). */
function countTasks(pool: WorkerPool): { started: number; settled: number } {
  const counts = { started: 0, settled: 0 };
  const run = pool.run.bind(pool);
  pool.run = (calls) => {
    const task = run(calls);
    counts.started++;
    // Attached first, so it runs before anything the encoder awaits on the same task.
    task.then(
      () => counts.settled++,
      () => counts.settled++,
    );
    return task;
  };
  return counts;
}

describe("the pool", () => {
  it("checks jobs", () => {
    expect(() => checkJobs(0)).toThrow(expect.objectContaining({ code: "EINVAL" }));
    expect(() => checkJobs(1.5)).toThrow(expect.objectContaining({ code: "EINVAL" }));
    expect(createPool(1)).toEqual({ pool: undefined, note: undefined });
  });

  it("a worker that dies fails the operation with EIO, and the pool recovers", async () => {
    const p = new WorkerPool(2);
    try {
      // Started, so that it takes tasks from the first window on (the crash needs it to).
      await p.ready();
      const state = buildState(
        [
          { kind: 1, pages: 2048 },
          { kind: 2, pages: 2048 },
        ],
        4096,
        0,
        3,
      );
      const o = { pageSize: 4096, maxRecordPayload: 65536, compress: true, checksum: "xxh3" as const };
      const encoder = new StreamEncoder({ size: state.length, ...o, compress: "lz4", ondata: () => undefined });
      let crashed = false;
      const run = encodeRegionParallel(
        p,
        encoder,
        { size: state.length, read: (at, into) => into.set(state.subarray(at, at + into.length)) },
        {
          ...o,
          chunkBytes: 65536,
          onprogress: () => {
            // The next window's chunks were handed out just before: a worker is busy with one.
            if (!crashed) {
              crashed = true;
              p.crash(0);
            }
          },
        },
      );
      await expect(run).rejects.toMatchObject({ code: "EIO" });
      encoder.abort();
      expect(p.restarts).toBe(1);
      // The same pool, afterwards: the right bytes.
      const again = await encodeOnPool(state, p, { ...o, chunkBytes: 65536 });
      expect(Buffer.compare(again, encodeSnapshot(state, { ...o, compress: "lz4", config: new Uint8Array([1, 2, 3]) }))).toBe(0);
    } finally {
      p.close();
    }
  });

  it("counts the calling thread as a job: a pool of N starts N - 1 workers", () => {
    for (const jobs of [2, 3, 5]) {
      const p = new WorkerPool(jobs);
      try {
        expect([p.jobs, p.workers]).toEqual([jobs, jobs - 1]);
      } finally {
        p.close();
      }
    }
  });

  it("the calling thread runs the tasks it waits for that no worker took, with the same results", async () => {
    const p = new WorkerPool(2);
    try {
      await p.ready();
      const c = p.core;
      const size = 64 * 1024;
      const data = c.alloc(size * 8);
      for (let i = 0; i < size * 8; i++) c.u8[data + i] = (i * 131) >>> 3;
      // The one worker takes two tasks (its pipeline), the other six wait in the queue.
      const tasks = Array.from({ length: 8 }, (_, i) => p.run([["xxh3_64", data + i * size, size, 0n]]));
      let lastSettled = false;
      tasks[7]!.then(() => (lastSettled = true));
      // The first task this thread takes (the last one queued) runs before help yields: it is
      // done before any worker message could have been handled.
      const helping = p.help(tasks);
      await Promise.resolve();
      expect(lastSettled).toBe(true);
      await helping;
      const results = await p.settle(tasks);
      expect(results.map((r) => r[0])).toEqual(Array.from({ length: 8 }, (_, i) => c.exports.xxh3_64(data + i * size, size, 0n)));
      c.free(data);
    } finally {
      p.close();
    }
  });

  it("help(tasks, until) stops taking tasks once `until` settled, and leaves the rest queued", async () => {
    const p = new WorkerPool(2);
    try {
      await p.ready();
      const c = p.core;
      const size = 4 << 20;
      const data = c.alloc(size);
      const tasks = Array.from({ length: 16 }, () => p.run([["xxh3_64", data, size, 0n]]));
      // Settled already: this thread runs the one task it took before it looks, then stops.
      await p.help(tasks, Promise.resolve());
      p.cancel(tasks);
      const settled = await Promise.allSettled(tasks);
      const cancelled = settled.filter((s) => s.status === "rejected" && (s.reason as MigrationError).code === "ECANCELED").length;
      // Without `until`, help drains the queue and nothing is left to cancel. The worker takes
      // a few while this thread runs one; most of the 16 are still waiting.
      expect(cancelled).toBeGreaterThanOrEqual(8);
      expect(settled[15]!.status).toBe("fulfilled");
      c.free(data);
    } finally {
      p.close();
    }
  });

  it("a kernel that traps on the calling thread fails its task with EFAULT as on a worker, and the pool goes on", async () => {
    const p = new WorkerPool(2);
    try {
      await p.ready();
      const outside = 0xfffffff0;
      // Two tasks keep the worker's pipeline full, so the trapping one is left to this thread,
      // which runs it before it first yields.
      const busy = [p.run([["lz4_table_size"]]), p.run([["lz4_table_size"]])];
      const bad = p.run([["crc32c", outside, 4096]]);
      let failure: unknown;
      bad.catch((error) => (failure = error));
      const helping = p.help([...busy, bad]);
      await Promise.resolve();
      expect(failure).toMatchObject({ code: "EFAULT", message: expect.stringContaining("a pool worker failed") });
      await helping;
      await Promise.allSettled(busy);
      // A fresh instance runs this thread's next task.
      const more = [p.run([["lz4_table_size"]]), p.run([["lz4_table_size"]]), p.run([["lz4_table_size"]])];
      await expect(p.settle(more)).resolves.toEqual(more.map(() => [p.core.exports.lz4_table_size()]));
    } finally {
      p.close();
    }
  });

  it("a kernel that traps on a worker fails its task and the one behind it, and results stay matched", async () => {
    const p = new WorkerPool(2);
    try {
      await p.ready();
      const outside = 0xfffffff0;
      // Both go to the one worker (two in flight); nobody helps: plain awaits.
      const bad = p.run([["crc32c", outside, 4096]]);
      const behind = p.run([["lz4_table_size"]]);
      await expect(bad).rejects.toMatchObject({ code: "EFAULT" });
      await expect(behind).rejects.toMatchObject({ code: "EFAULT", message: expect.stringContaining("trapped") });
      const c = p.core;
      const data = c.alloc(4096);
      c.u8.fill(7, data, data + 4096);
      await expect(p.run([["xxh3_64", data, 4096, 0n]])).resolves.toEqual([c.exports.xxh3_64(data, 4096, 0n)]);
      await expect(p.run([["lz4_table_size"]])).resolves.toEqual([c.exports.lz4_table_size()]);
      c.free(data);
    } finally {
      p.close();
    }
  });

  it("an encode that fails half-way leaves no task running on memory it released", async () => {
    const p = new WorkerPool(2);
    try {
      await p.ready();
      const state = buildState([{ kind: 3, pages: 4096 }], 4096, 0, 9);
      const counted = countTasks(p);
      const encoder = new StreamEncoder({ size: state.length, pageSize: 4096, maxRecordPayload: 65536, compress: "lz4", ondata: () => undefined });
      let windows = 0;
      const failing = encodeRegionParallel(
        p,
        encoder,
        { size: state.length, read: (at, into) => into.set(state.subarray(at, at + into.length)) },
        {
          ...SMALL_CHUNKS,
          flush: async () => {
            if (++windows === 2) throw new MigrationError("EIO", "the output failed");
          },
        },
      );
      await expect(failing).rejects.toMatchObject({ code: "EIO" });
      encoder.abort();
      expect(counted.started).toBeGreaterThan(4);
      expect(counted.settled).toBe(counted.started);
    } finally {
      p.close();
    }
  });

  for (const failure of ["a read", "the output"] as const) {
    it(`reading ahead, ${failure} failing fails the encode once nothing runs on its memory, reads included`, async () => {
      const p = new WorkerPool(2);
      try {
        await p.ready();
        const state = buildState([{ kind: 3, pages: 4096 }], 4096, 0, 10);
        const counted = countTasks(p);
        let reads = 0;
        let readsSettled = 0;
        let windows = 0;
        const encoder = new StreamEncoder({ size: state.length, pageSize: 4096, maxRecordPayload: 65536, compress: "lz4", ondata: () => undefined });
        const failing = encodeRegionParallel(
          p,
          encoder,
          {
            size: state.length,
            read: () => {
              throw new Error("the encoder reads ahead off this thread where it can");
            },
            // Slow reads: when the output fails, the next window's read is still under way.
            readAsync: (at, into) => {
              const n = ++reads;
              return new Promise<void>((resolve, reject) => {
                setTimeout(() => {
                  readsSettled++;
                  if (failure === "a read" && n === 3) reject(new MigrationError("EIO", "cannot read the state"));
                  else {
                    into.set(state.subarray(at, at + into.length));
                    resolve();
                  }
                }, 20);
              });
            },
          },
          {
            ...SMALL_CHUNKS,
            flush: async () => {
              if (failure === "the output" && ++windows === 2) throw new MigrationError("EIO", "the output failed");
            },
          },
        );
        await expect(failing).rejects.toMatchObject({ code: "EIO" });
        expect([counted.settled, readsSettled]).toEqual([counted.started, reads]);
        encoder.abort();
        expect(counted.started).toBeGreaterThan(4);
        expect(reads).toBeGreaterThanOrEqual(3);
      } finally {
        p.close();
      }
    });
  }

  it("verify and decode on a pool of 16 fit the pool's memory (tables sized per part)", async () => {
    const p = new WorkerPool(16);
    try {
      const state = buildState([{ kind: 3, pages: 256 }], 4096, 0, 12);
      const stream = encodeSnapshot(state, { compress: "lz4" });
      for (const payloads of [false, true]) {
        let records = 0;
        const target: DecodeTarget = { open: () => undefined, apply: () => void records++, commit: () => undefined, abort: () => undefined };
        const decoder = new ParallelDecoder(p, target, {}, payloads);
        await decoder.push(stream);
        await decoder.end();
        expect(records).toBeGreaterThan(0);
      }
    } finally {
      p.close();
    }
  });

  // Large records make chunks of two records each, one per thread, each slot about 5 records'
  // worth with its LZ4 scratch. (Two spare slots per thread, as small chunks have, came to 14
  // slots at 4 threads of 48 MiB records: past the 4 GiB memory.)
  it.each([
    { threads: 8, record: 16, pages: [300, 200, 100] },
    { threads: 4, record: 48, pages: [40, 20, 40] },
  ])("records of $record MiB on $threads threads fit the pool's memory, and give one thread's bytes", async ({ threads, record, pages }) => {
    const p = new WorkerPool(threads);
    try {
      const state = buildState(
        [
          { kind: 3, pages: pages[0]! },
          { kind: 0, pages: pages[1]! },
          { kind: 1, pages: pages[2]! },
        ],
        4096,
        0,
        13,
      );
      const o = { pageSize: 4096, maxRecordPayload: record << 20, compress: true, checksum: "xxh3" as const, chunkBytes: 2 << 20 };
      const parallel = await encodeOnPool(state, p, o);
      expect(Buffer.compare(parallel, encodeSnapshot(state, { ...o, compress: "lz4", config: new Uint8Array([1, 2, 3]) }))).toBe(0);
    } finally {
      p.close();
    }
  });

  it("ready() waits for the workers to start, with a deadline", async () => {
    const p = new WorkerPool(2);
    try {
      // No time at all, before this thread yielded once: the worker cannot have started yet.
      await expect(p.ready(0)).rejects.toMatchObject({ code: "ETIMEDOUT" });
      await p.ready();
      await expect(p.ready(0)).resolves.toBeUndefined();
    } finally {
      p.close();
    }
  });

  it("a closed pool refuses work with ECANCELED", async () => {
    const p = new WorkerPool(2);
    p.close();
    await expect(p.run([["lz4_table_size"]])).rejects.toMatchObject({ code: "ECANCELED" });
  });
});
