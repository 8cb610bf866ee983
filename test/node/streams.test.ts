import { randomBytes } from "node:crypto";
import { Readable, Transform, Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { setImmediate as tick, setTimeout as sleep } from "node:timers/promises";
import { fc, test } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import { decodeSnapshot, encodeSnapshot } from "../../src/codec/snapshot.js";
import { MigrationError, type MigrationErrorCode } from "../../src/core/errors.js";
import { core } from "../../src/core/instance.js";
import { createDecodeStream, createEncodeStream, decodeChunks, decodeChunksWithSummary, encodeChunks } from "../../src/node/index.js";

/** Deterministic bytes with some all-zero stretches, so ZERO records show up too. */
function makeState(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    if ((i >> 10) % 5 === 2) continue;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

/** Cuts `bytes` at the given (unsorted, possibly repeated or out-of-range) positions. */
function cut(bytes: Uint8Array, positions: readonly number[]): Uint8Array[] {
  const points = [...new Set(positions.map((p) => p % (bytes.length + 1)))].sort((a, b) => a - b);
  const chunks: Uint8Array[] = [];
  let at = 0;
  for (const p of points) {
    if (p > at) chunks.push(bytes.subarray(at, p));
    at = Math.max(at, p);
  }
  if (at < bytes.length) chunks.push(bytes.subarray(at));
  return chunks;
}

function concat(chunks: readonly Uint8Array[]): Uint8Array {
  return new Uint8Array(Buffer.concat(chunks));
}

/** A Writable that keeps what it receives; `delayMs` makes it a slow consumer. */
function collector(options: { highWaterMark?: number; delayMs?: number; onwrite?: (chunk: Uint8Array) => void } = {}) {
  const chunks: Uint8Array[] = [];
  const writable = new Writable({
    highWaterMark: options.highWaterMark ?? 16 * 1024,
    write(chunk: Buffer, _encoding, callback) {
      chunks.push(new Uint8Array(chunk));
      options.onwrite?.(chunk);
      if (options.delayMs === undefined) callback();
      else setTimeout(callback, options.delayMs);
    },
  });
  return { chunks, writable, bytes: () => concat(chunks) };
}

/** Re-chunks a byte stream at the given sizes (cycled), to feed decoders odd segmentations. */
function rechunker(sizes: readonly number[]): Transform {
  let pending = Buffer.alloc(0);
  let i = 0;
  return new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      pending = Buffer.concat([pending, chunk]);
      for (;;) {
        const size = sizes.length === 0 ? pending.length : sizes[i % sizes.length]!;
        if (size === 0 || pending.length < size) break;
        this.push(pending.subarray(0, size));
        pending = pending.subarray(size);
        i++;
      }
      callback();
    },
    flush(callback) {
      if (pending.length > 0) this.push(pending);
      callback();
    },
  });
}

/** Byte equality without vitest's per-index deep equality (which is far too slow on MiBs). */
function expectBytes(actual: Uint8Array | undefined, expected: Uint8Array): void {
  expect(actual).toBeInstanceOf(Uint8Array);
  expect(actual!.length).toBe(expected.length);
  const same = Buffer.from(actual!.buffer, actual!.byteOffset, actual!.length).equals(Buffer.from(expected.buffer, expected.byteOffset, expected.length));
  if (!same) {
    let i = 0;
    while (actual![i] === expected[i]) i++;
    expect.fail(`bytes differ first at offset ${i}`);
  }
}

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error("expected a rejection");
}

function expectCode(error: unknown, code: MigrationErrorCode): void {
  expect(error).toBeInstanceOf(MigrationError);
  expect((error as MigrationError).code).toBe(code);
}

describe("createEncodeStream / createDecodeStream", () => {
  test.prop(
    [
      fc.record({
        size: fc.integer({ min: 0, max: 40_000 }),
        pageSize: fc.constantFrom(64, 256, 4096),
        split: fc.array(fc.integer({ min: 1, max: 20_000 }), { maxLength: 3 }),
        seed: fc.integer(),
        inputCuts: fc.array(fc.nat(), { maxLength: 12 }),
        streamSizes: fc.array(fc.integer({ min: 1, max: 5000 }), { maxLength: 4 }),
        config: fc.option(fc.uint8Array({ maxLength: 64 }), { nil: undefined }),
        checksum: fc.constantFrom("xxh3" as const, "crc32c" as const),
      }),
    ],
    { numRuns: 40 },
  )("round trip through pipeline with random chunkings", async ({ size, pageSize, split, seed, inputCuts, streamSizes, config, checksum }) => {
    const state = makeState(size, seed);
    // Regions: the split sizes that fit, then the rest (empty only when the whole state is).
    const regions: { name: string; size: number }[] = [];
    let left = size;
    for (const s of split) {
      if (s >= left) break;
      regions.push({ name: `r${regions.length}`, size: s });
      left -= s;
    }
    regions.push({ name: `r${regions.length}`, size: left });
    const encode = createEncodeStream({ regions, pageSize, checksum, ...(config ? { config } : {}) });
    const decode = createDecodeStream({ regions, chunkSize: 7000 });
    const out = collector();
    await pipeline(Readable.from(cut(state, inputCuts)), encode, rechunker(streamSizes), decode, out.writable);
    expectBytes(out.bytes(), state);
    expect(out.chunks.every((c) => c.length <= 7000)).toBe(true);
    expect(decode.config).toEqual(config);
    expect(decode.summary().ended).toBe(true);
    expect(encode.summary().bytes).toBe(decode.summary().bytes);
    expect(encode.summary().config).toBe(config !== undefined);
  });

  it("decodes what encodeSnapshot wrote, and encodeSnapshot's reader decodes the stream's output", async () => {
    const state = makeState(100_000, 7);
    const snapshot = encodeSnapshot(state, { pageSize: 1024 });
    const out = collector();
    await pipeline(Readable.from(cut(snapshot, [1, 2, 3, 500, 70_000])), createDecodeStream(), out.writable);
    expectBytes(out.bytes(), state);

    const encoded = collector();
    await pipeline(Readable.from(cut(state, [5, 4097, 50_001])), createEncodeStream({ size: state.length, pageSize: 1024 }), encoded.writable);
    expectBytes(decodeSnapshot(encoded.bytes()), state);
  });

  it("handles an empty state, and mixes with the iterable helpers", async () => {
    const empty = collector();
    await pipeline(Readable.from([]), createEncodeStream({ size: 0 }), createDecodeStream(), empty.writable);
    expect(empty.chunks).toHaveLength(0);

    const state = makeState(70_000, 8);
    const regions = [
      { name: "config-space", size: 4096 },
      { name: "bar0", size: 65_904 },
    ];
    const decode = createDecodeStream({ regions, requireConfig: true });
    const out = collector();
    await pipeline(Readable.from(encodeChunks(cut(state, [3, 5000]), { regions, config: new Uint8Array([9]) })), decode, out.writable);
    expectBytes(out.bytes(), state);
    expect(decode.config).toEqual(new Uint8Array([9]));
    expect(decode.header?.regions).toEqual(regions);
  });

  it("encodes incrementally: output starts before the input ends, and read-ahead stays bounded with a slow consumer", async () => {
    const total = 16 << 20;
    const chunk = 64 << 10;
    const state = new Uint8Array(randomBytes(total));
    let produced = 0;
    let producedAtFirstOutput = -1;
    let written = 0;
    let maxLag = 0;
    async function* source() {
      for (let at = 0; at < total; at += chunk) {
        produced += chunk;
        yield state.subarray(at, at + chunk);
      }
    }
    const out = collector({
      highWaterMark: 1024,
      delayMs: 2,
      onwrite: (c) => {
        written += c.length;
        // The header alone comes out on the first write; wait for record bytes.
        if (producedAtFirstOutput < 0 && written > 4096) producedAtFirstOutput = produced;
        // Random data does not compress: stream bytes track state bytes, so this is what the
        // pipeline holds between the source and the consumer.
        maxLag = Math.max(maxLag, produced - written);
      },
    });
    await pipeline(Readable.from(source()), createEncodeStream({ size: total }), out.writable);
    expect(producedAtFirstOutput).toBeGreaterThan(0);
    expect(producedAtFirstOutput).toBeLessThan(total / 4);
    expect(maxLag).toBeLessThan(4 << 20);
    expectBytes(decodeSnapshot(out.bytes()), state);
  });

  it("emits the decoded state in chunkSize pieces to a slow consumer", async () => {
    const state = makeState(3 << 20, 3);
    const out = collector({ highWaterMark: 1, delayMs: 1 });
    await pipeline(Readable.from([encodeSnapshot(state)]), createDecodeStream({ chunkSize: 256 << 10 }), out.writable);
    expect(out.chunks.length).toBe(12);
    expectBytes(out.bytes(), state);
  });

  it("fails a corrupt stream with EBADMSG and emits nothing", async () => {
    const stream = encodeSnapshot(makeState(50_000, 1));
    const damaged = stream.slice();
    // The END record is the last 56 bytes; before it, the last data record's checksum (8 bytes)
    // and payload: this lands in that payload.
    const at = damaged.length - 100;
    damaged[at] = damaged[at]! ^ 0x01;
    const out = collector();
    const error = await rejection(pipeline(Readable.from(cut(damaged, [10, 9000])), createDecodeStream(), out.writable));
    expectCode(error, "EBADMSG");
    expect((error as MigrationError).recordIndex).toBeTypeOf("number");
    expect(out.chunks).toHaveLength(0);
  });

  it("fails a truncated stream with ENODATA and emits nothing", async () => {
    const stream = encodeSnapshot(makeState(50_000, 2));
    for (const length of [0, 10, 100, stream.length - 32, stream.length - 1]) {
      const out = collector();
      const error = await rejection(pipeline(Readable.from([stream.subarray(0, length)]), createDecodeStream(), out.writable));
      expectCode(error, "ENODATA");
      expect(out.chunks).toHaveLength(0);
    }
  });

  test.prop([fc.nat(), fc.integer({ min: 1, max: 255 }), fc.array(fc.nat(), { maxLength: 5 })], { numRuns: 60 })(
    "any flipped byte is a stream error, never output",
    async (where, mask, cuts) => {
      const stream = encodeSnapshot(makeState(20_000, 5), { pageSize: 512, maxRecordPayload: 4096 });
      const damaged = stream.slice();
      const at = where % damaged.length;
      damaged[at] = damaged[at]! ^ mask;
      const out = collector();
      const error = await rejection(pipeline(Readable.from(cut(damaged, cuts)), createDecodeStream(), out.writable));
      expect(error).toBeInstanceOf(MigrationError);
      expect(["EBADMSG", "ENODATA", "E2BIG"]).toContain((error as MigrationError).code);
      expect(out.chunks).toHaveLength(0);
    },
  );

  test.prop([fc.nat(), fc.array(fc.nat(), { maxLength: 5 })], { numRuns: 40 })("any truncation is ENODATA, never output", async (where, cuts) => {
    const stream = encodeSnapshot(makeState(20_000, 6), { pageSize: 512, maxRecordPayload: 4096 });
    const truncated = stream.subarray(0, where % stream.length);
    const out = collector();
    const error = await rejection(pipeline(Readable.from(cut(truncated, cuts)), createDecodeStream(), out.writable));
    expectCode(error, "ENODATA");
    expect(out.chunks).toHaveLength(0);
  });

  it("keeps the decoder's codes for incompatible streams", async () => {
    const stream = encodeSnapshot(makeState(10_000, 4), { deviceId: "gpu0" });
    const error = await rejection(pipeline(Readable.from([stream]), createDecodeStream({ deviceId: "nic0" }), collector().writable));
    expectCode(error, "ENODEV");
  });

  it("reports encode misuse with EINVAL", async () => {
    expect(() => createEncodeStream({} as never)).toThrow(MigrationError);
    expect(() => createEncodeStream({ size: 10, regions: [{ name: "a", size: 11 }] })).toThrow(/regions add up/);
    expect(() => createEncodeStream({ size: 10, pageSize: 64, maxRecordPayload: 64, config: new Uint8Array(65) })).toThrow(/config blob/);
    expect(() => createEncodeStream({ size: 10, baseDigest: 1n } as never)).toThrow(/incremental/);

    const tooMuch = await rejection(pipeline(Readable.from([new Uint8Array(8), new Uint8Array(8)]), createEncodeStream({ size: 10 }), collector().writable));
    expectCode(tooMuch, "EINVAL");
    const tooLittle = await rejection(pipeline(Readable.from([new Uint8Array(8)]), createEncodeStream({ size: 10 }), collector().writable));
    expectCode(tooLittle, "EINVAL");
  });

  it("aborts an encode mid-stream through its signal with ECANCELED and frees the encoder", async () => {
    const before = core().allocatedBytes;
    const controller = new AbortController();
    const state = makeState(4 << 20, 9);
    async function* source() {
      for (let at = 0; at < state.length; at += 64 << 10) {
        if (at === 2 << 20) controller.abort(new Error("operator gave up"));
        yield state.subarray(at, at + (64 << 10));
        await tick();
      }
    }
    const error = await rejection(
      pipeline(Readable.from(source()), createEncodeStream({ size: state.length, signal: controller.signal }), collector().writable),
    );
    expectCode(error, "ECANCELED");
    expect((error as MigrationError).cause).toEqual(new Error("operator gave up"));
    expect(core().allocatedBytes).toBe(before);
  });

  it("aborts a decode mid-stream through its signal with ECANCELED, emits nothing and frees the decoder", async () => {
    const stream = encodeSnapshot(makeState(2 << 20, 10));
    const before = core().allocatedBytes;
    const controller = new AbortController();
    async function* source() {
      for (let at = 0; at < stream.length; at += 32 << 10) {
        if (at >= stream.length / 2) controller.abort();
        yield stream.subarray(at, at + (32 << 10));
        await tick();
      }
    }
    const out = collector();
    const decode = createDecodeStream({ signal: controller.signal });
    const error = await rejection(pipeline(Readable.from(source()), decode, out.writable));
    expectCode(error, "ECANCELED");
    expect(decode.header).toBeDefined();
    expect(out.chunks).toHaveLength(0);
    expect(core().allocatedBytes).toBe(before);
  });

  it("fails at once with a signal that is already aborted", async () => {
    const signal = AbortSignal.abort();
    const encode = await rejection(pipeline(Readable.from([new Uint8Array(10)]), createEncodeStream({ size: 10, signal }), collector().writable));
    expectCode(encode, "ECANCELED");
    const decode = await rejection(pipeline(Readable.from([encodeSnapshot(new Uint8Array(10))]), createDecodeStream({ signal }), collector().writable));
    expectCode(decode, "ECANCELED");
  });

  it("reports an already-aborted signal through the normal error path, after it could be piped (Node 24+, Deno, Bun)", async () => {
    // Destroying the stream inside its constructor made pipeline() fail with
    // ERR_STREAM_UNABLE_TO_PIPE on Node 24 and left the ECANCELED 'error' unhandled.
    const before = core().allocatedBytes;
    const reason = new Error("gave up before starting");
    for (const make of [
      () => createEncodeStream({ size: 10, signal: AbortSignal.abort(reason) }),
      () => createDecodeStream({ signal: AbortSignal.abort(reason) }),
    ]) {
      const stream = make();
      expect(stream.destroyed).toBe(false);
      const error = await new Promise<unknown>((resolve) => stream.once("error", resolve));
      expectCode(error, "ECANCELED");
      expect((error as MigrationError).cause).toBe(reason);
      expect(stream.destroyed).toBe(true);

      const piped = await rejection(pipeline(Readable.from([new Uint8Array(10)]), make(), collector().writable));
      expectCode(piped, "ECANCELED");
    }
    expect(core().allocatedBytes).toBe(before);
  });

  it("works under pipeline(..., { signal }): completes when not aborted, frees the codec when aborted", async () => {
    const state = makeState(1 << 20, 11);
    const done = collector();
    await pipeline(Readable.from(cut(state, [100, 300_000])), createEncodeStream({ size: state.length }), createDecodeStream(), done.writable, {
      signal: new AbortController().signal,
    });
    expectBytes(done.bytes(), state);

    const before = core().allocatedBytes;
    const controller = new AbortController();
    async function* source() {
      for (let at = 0; at < state.length; at += 16 << 10) {
        if (at === 512 << 10) controller.abort();
        yield state.subarray(at, at + (16 << 10));
        await tick();
      }
    }
    const out = collector();
    const error = await rejection(
      pipeline(Readable.from(source()), createEncodeStream({ size: state.length }), createDecodeStream(), out.writable, { signal: controller.signal }),
    );
    expect((error as Error).name).toBe("AbortError");
    expect(out.chunks).toHaveLength(0);
    expect(core().allocatedBytes).toBe(before);
  });
});

describe("encodeChunks / decodeChunks", () => {
  test.prop([fc.integer({ min: 0, max: 30_000 }), fc.integer(), fc.array(fc.nat(), { maxLength: 10 }), fc.boolean()], { numRuns: 30 })(
    "round trip from sync and async sources",
    async (size, seed, cuts, asyncSource) => {
      const state = makeState(size, seed);
      const chunks = cut(state, cuts);
      async function* slow() {
        for (const c of chunks) {
          await tick();
          yield c;
        }
      }
      const config = new Uint8Array([1, 2, 3]);
      const encoded = encodeChunks(asyncSource ? slow() : chunks, { size, pageSize: 256, config });
      const { state: decoded, config: got } = await decodeChunksWithSummary(encoded);
      expectBytes(decoded, state);
      expect(got).toEqual(config);
    },
  );

  it("is lazy and pull-driven", async () => {
    const total = 8 << 20;
    let produced = 0;
    function* source() {
      for (let at = 0; at < total; at += 64 << 10) {
        produced += 64 << 10;
        yield new Uint8Array(randomBytes(64 << 10));
      }
    }
    const before = core().allocatedBytes;
    const iterator = encodeChunks(source(), { size: total });
    expect(produced).toBe(0);
    const first = await iterator.next();
    expect(first.done).toBe(false);
    await iterator.next();
    expect(produced).toBeLessThan(total / 2);
    // Breaking off early closes the encoder.
    await iterator.return();
    expect(core().allocatedBytes).toBe(before);
  });

  it("decodeChunks reports stream errors with their codes", async () => {
    const stream = encodeSnapshot(makeState(10_000, 12));
    expectCode(await rejection(decodeChunks([stream.subarray(0, 5000)])), "ENODATA");
    const damaged = stream.slice();
    damaged[100] = damaged[100]! ^ 0xff;
    expectCode(await rejection(decodeChunks([damaged])), "EBADMSG");
    expectCode(await rejection(decodeChunks(["not bytes" as never])), "EINVAL");
    expectCode(await rejection(decodeChunks(42 as never)), "EINVAL");
    expectBytes(await decodeChunks([stream]), makeState(10_000, 12));
  });

  it("an abort is seen even while the source is stalled, and closes the source", async () => {
    let closed = false;
    /** Gives `first`, then never answers again. */
    const stalled = (first: Uint8Array): AsyncIterable<Uint8Array> => ({
      [Symbol.asyncIterator]() {
        let given = false;
        return {
          next: () => {
            if (given) return new Promise<IteratorResult<Uint8Array>>(() => undefined);
            given = true;
            return Promise.resolve({ done: false, value: first });
          },
          return: () => {
            closed = true;
            return Promise.resolve({ done: true, value: undefined });
          },
        };
      },
    });
    const controller = new AbortController();
    const before = core().allocatedBytes;
    const pending = rejection(decodeChunks(stalled(encodeSnapshot(makeState(10_000, 13)).subarray(0, 200)), { signal: controller.signal }));
    await sleep(5);
    controller.abort();
    expectCode(await pending, "ECANCELED");
    expect(closed).toBe(true);
    closed = false;
    expect(core().allocatedBytes).toBe(before);

    const encodeController = new AbortController();
    const encoding = rejection(
      (async () => {
        for await (const _ of encodeChunks(stalled(new Uint8Array(100)), { size: 1000, signal: encodeController.signal })) {
          // drain
        }
      })(),
    );
    await sleep(5);
    encodeController.abort();
    expectCode(await encoding, "ECANCELED");
    expect(closed).toBe(true);
    expect(core().allocatedBytes).toBe(before);
  });

  it("rejects at once with an aborted signal", async () => {
    const signal = AbortSignal.abort();
    expectCode(await rejection(decodeChunks([new Uint8Array(1)], { signal })), "ECANCELED");
    expectCode(await rejection(encodeChunks([new Uint8Array(1)], { size: 1, signal }).next()), "ECANCELED");
  });
});
