// Property tests of the codec: what goes in comes out, whatever the state, the layout, the page
// size, the record size, the checksum, the chunking or the rounds, and every stream the encoder
// writes is accepted by the independent reference reader (test/codec/stream-builder.ts), which
// reads FORMAT.md literally with the pure-TS checksums and XBZRLE.
import { fc, test } from "@fast-check/vitest";
import { describe, expect } from "vitest";
import { allocate } from "../../src/core/buffer.js";
import { MigrationError } from "../../src/core/errors.js";
import { core } from "../../src/core/instance.js";
import { createEncoder, type EncoderSummary, type RoundStats } from "../../src/codec/encoder.js";
import { createDecoder, decodeSnapshot, encodeSnapshot, encodeSnapshotWithSummary } from "../../src/codec/snapshot.js";
import { concat, hex, referenceDecode, type ReferenceResult, type RegionDef, Tag, xxh3 } from "./stream-builder.js";

// ---------------------------------------------------------------------------------------------
// Generators

/** xorshift32: states are built from a seed, so big ones stay cheap and shrink by seed. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 0x9e3779b9;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
}

type Style = "random" | "zero-heavy" | "repetitive" | "mixed" | "zero";
const STYLES: readonly Style[] = ["random", "zero-heavy", "repetitive", "mixed", "zero"];

function makeState(size: number, seed: number, style: Style, pageSize: number): Uint8Array {
  const next = rng(seed);
  const s = new Uint8Array(size);
  const fillPage = (from: number, to: number, kind: number): void => {
    if (kind === 0) return; // zero
    if (kind === 1) for (let i = from; i < to; i++) s[i] = next() & 0xff;
    if (kind === 2) {
      const pattern = [next() & 0xff, next() & 0xff, next() & 0xff];
      for (let i = from; i < to; i++) s[i] = pattern[i % 3]!;
    }
    if (kind === 3) for (let k = 0; k < 3; k++) s[from + (next() % (to - from))] = 1 + (next() % 255);
  };
  switch (style) {
    case "zero":
      break;
    case "random":
      fillPage(0, size, 1);
      break;
    case "repetitive":
      if (size > 0) fillPage(0, size, 2);
      break;
    case "zero-heavy":
      for (let k = 0; k < Math.ceil(size / 200); k++) if (size > 0) s[next() % size] = 1 + (next() % 255);
      break;
    case "mixed":
      for (let at = 0; at < size; at += pageSize) fillPage(at, Math.min(size, at + pageSize), next() % 4);
      break;
  }
  return s;
}

type Change = "none" | "sparse" | "dense" | "zero-pages" | "rewrite" | "mixed";
const CHANGES: readonly Change[] = ["none", "sparse", "dense", "zero-pages", "rewrite", "mixed"];

/** A new version of `base`: changes of the given kind, page by page where it matters. */
function mutate(base: Uint8Array, seed: number, change: Change, pageSize: number): Uint8Array {
  const next = rng(seed ^ 0x5bd1e995);
  const s = base.slice();
  const flipByte = (i: number): void => {
    s[i] = s[i]! ^ (1 + (next() % 255));
  };
  const pages = Math.ceil(s.length / pageSize);
  for (let p = 0; p < pages; p++) {
    const from = p * pageSize;
    const to = Math.min(s.length, from + pageSize);
    let kind: number;
    if (change === "none") kind = 0;
    else if (change === "sparse") kind = next() % 4 === 0 ? 1 : 0;
    else if (change === "dense") kind = 2;
    else if (change === "zero-pages") kind = next() % 2 === 0 ? 3 : 0;
    else if (change === "rewrite") kind = 4;
    else kind = next() % 5;
    if (kind === 1) for (let k = 0; k < 1 + (next() % 3); k++) flipByte(from + (next() % (to - from)));
    if (kind === 2) for (let i = from; i < to; i++) if (next() % 8 === 0) flipByte(i);
    if (kind === 3) s.fill(0, from, to);
    if (kind === 4) for (let i = from; i < to; i++) s[i] = next() & 0xff;
  }
  return s;
}

const NAMES = ["ram", "vram", "cfg", "état", "寄存器", "r5"];

interface Layout {
  pageSize: number;
  maxRecordPayload: number;
  checksum: "xxh3" | "crc32c";
  regions: RegionDef[];
  seed: number;
  style: Style;
}

/** Page size 64 to 1024, a record limit from one page to a few (not always a multiple). */
const layoutArb = (maxRegion: number, maxRegions = 4): fc.Arbitrary<Layout> =>
  fc
    .record({
      shift: fc.integer({ min: 6, max: 10 }),
      pagesPerRecord: fc.integer({ min: 1, max: 5 }),
      extra: fc.integer({ min: 0, max: 1023 }),
      checksum: fc.constantFrom("xxh3" as const, "crc32c" as const),
      sizes: fc.array(fc.oneof(fc.integer({ min: 0, max: maxRegion }), fc.constantFrom(0, 1, 63, 64, 65, 1024)), { minLength: 1, maxLength: maxRegions }),
      seed: fc.integer(),
      style: fc.constantFrom(...STYLES),
    })
    .map(({ shift, pagesPerRecord, extra, checksum, sizes, seed, style }) => {
      const pageSize = 2 ** shift;
      return {
        pageSize,
        maxRecordPayload: pageSize * pagesPerRecord + (extra % pageSize),
        checksum,
        regions: sizes.map((size, i) => ({ name: NAMES[i]!, size })),
        seed,
        style,
      };
    });

const totalOf = (regions: readonly RegionDef[]): number => regions.reduce((n, r) => n + r.size, 0);
const pagesOf = (regions: readonly RegionDef[], pageSize: number): number => regions.reduce((n, r) => n + Math.ceil(r.size / pageSize), 0);

function stateFor(layout: Layout): Uint8Array {
  return makeState(totalOf(layout.regions), layout.seed, layout.style, layout.pageSize);
}

function encoderOptions(layout: Layout) {
  return { regions: layout.regions, pageSize: layout.pageSize, maxRecordPayload: layout.maxRecordPayload, checksum: layout.checksum };
}

/** Cut points for a stream of `length` bytes: chunks of 0 to `max` bytes (empty ones included). */
const cutsArb = fc.array(fc.integer({ min: 0, max: 97 }), { minLength: 1, maxLength: 40 });

function chunksOf(data: Uint8Array, sizes: readonly number[]): Uint8Array[] {
  if (!sizes.some((n) => n > 0)) sizes = [...sizes, 1]; // empty chunks, but progress
  const out: Uint8Array[] = [];
  let at = 0;
  let i = 0;
  while (at < data.length) {
    const n = sizes[i++ % sizes.length]!;
    out.push(data.subarray(at, at + n));
    at += n;
  }
  return out;
}

/** Pages of `state` (all regions) that are entirely zero. */
function zeroPages(state: Uint8Array, regions: readonly RegionDef[], pageSize: number): number {
  let n = 0;
  let start = 0;
  for (const r of regions) {
    for (let at = 0; at < r.size; at += pageSize) {
      if (state.subarray(start + at, start + Math.min(r.size, at + pageSize)).every((b) => b === 0)) n++;
    }
    start += r.size;
  }
  return n;
}

/** Checks what the encoder promises beyond validity: records within the limit, DELTA only when smaller. */
function checkEncoderChoices(ref: ReferenceResult): void {
  for (const r of ref.records) {
    expect(r.length).toBeLessThanOrEqual(ref.maxRecordPayload);
    if (r.tag === Tag.DELTA) {
      // FORMAT.md 4: encoders use DELTA only when 4 + n is smaller than the page.
      const region = ref.regions[r.region]!;
      const view = new DataView(r.payload.buffer, r.payload.byteOffset, r.payload.length);
      let q = 0;
      for (let i = 0; i < r.pages; i++) {
        const n = view.getUint32(q, true);
        const offset = Number(r.offset) + i * ref.pageSize;
        expect(4 + n).toBeLessThan(Math.min(ref.pageSize, region.size - offset));
        q += 4 + n;
      }
    }
  }
}

function decoderSummaryMatches(decoder: ReturnType<typeof createDecoder>, ref: ReferenceResult, stream: Uint8Array): void {
  const summary = decoder.summary();
  expect(summary.records).toEqual(ref.counts);
  expect(summary.pages).toEqual(ref.pages);
  expect(summary.rounds).toEqual(ref.rounds);
  expect(summary.bytes).toBe(stream.length);
  expect(summary.ended).toBe(true);
  const total = totalOf(ref.regions);
  expect(summary.ratio).toBe(total > 0 ? stream.length / total : undefined);
}

// ---------------------------------------------------------------------------------------------

describe("full streams", () => {
  test.prop([layoutArb(1500)], { numRuns: 120 })(
    "round trip for random layouts, page sizes, record limits and checksums; the reference reader agrees",
    (layout) => {
      const state = stateFor(layout);
      const { stream, summary } = encodeSnapshotWithSummary(state, { ...encoderOptions(layout), deviceId: "dev" });
      const ref = referenceDecode(stream);
      expect(hex(ref.state)).toBe(hex(state));
      expect(ref).toMatchObject({ pageSize: layout.pageSize, alg: layout.checksum, deviceId: "dev", regions: layout.regions, base: undefined });
      expect(ref.maxRecordPayload).toBe(layout.maxRecordPayload);
      checkEncoderChoices(ref);

      const decoder = createDecoder({ regions: layout.regions, deviceId: "dev" });
      decoder.push(stream, true);
      expect(hex(decoder.result())).toBe(hex(state));
      decoderSummaryMatches(decoder, ref, stream);

      // Every page sent exactly once, zero pages as ZERO.
      const pages = pagesOf(layout.regions, layout.pageSize);
      const zeros = zeroPages(state, layout.regions, layout.pageSize);
      expect(summary).toEqual({
        records: ref.records.length,
        bytes: stream.length,
        pages: { raw: pages - zeros, lz4: 0, zero: zeros, delta: 0, clean: 0 },
        compressed: { records: 0, bytes: 0, stateBytes: 0 },
        rounds: 0,
        config: false,
        stateBytes: state.length,
        checksum: layout.checksum,
      });
      expect(ref.pages).toEqual({ raw: pages - zeros, lz4: 0, zero: zeros, delta: 0 });
    },
  );

  test("edge layouts: an empty state, empty regions, one byte, maximum-size names", () => {
    const cases: { state: Uint8Array; regions?: RegionDef[] }[] = [
      { state: new Uint8Array(0) },
      {
        state: new Uint8Array(0),
        regions: [
          { name: "a", size: 0 },
          { name: "b", size: 0 },
        ],
      },
      { state: Uint8Array.of(7) },
      { state: Uint8Array.of(0) },
      {
        state: makeState(130, 1, "random", 64),
        regions: [
          { name: "x".repeat(255), size: 0 },
          { name: "é".repeat(127), size: 130 },
        ],
      },
    ];
    for (const { state, regions } of cases) {
      const options = { pageSize: 64, ...(regions ? { regions } : {}) };
      const stream = encodeSnapshot(state, options);
      expect(hex(referenceDecode(stream).state)).toBe(hex(state));
      expect(hex(decodeSnapshot(stream))).toBe(hex(state));
    }
  });

  test('writer defaults: page size 4096, records up to 1 MiB, XXH3-64, region "state"', () => {
    const state = makeState(3 * 4096 + 5, 3, "mixed", 4096);
    const ref = referenceDecode(encodeSnapshot(state));
    expect(ref).toMatchObject({ pageSize: 4096, maxRecordPayload: 1 << 20, alg: "xxh3", deviceId: "", regions: [{ name: "state", size: state.length }] });
    expect(hex(ref.state)).toBe(hex(state));
  });

  test("a large record limit merges runs of pages into one record; a one-page limit splits them", () => {
    const state = makeState(64 * 20, 9, "random", 64);
    const merged = referenceDecode(encodeSnapshot(state, { pageSize: 64, maxRecordPayload: 64 * 20 }));
    expect(merged.records.map((r) => [r.tag, r.pages])).toEqual([
      [Tag.PAGES, 20],
      [Tag.END, 0],
    ]);
    const split = referenceDecode(encodeSnapshot(state, { pageSize: 64, maxRecordPayload: 64 + 63 }));
    expect(split.records.filter((r) => r.tag === Tag.PAGES).map((r) => r.pages)).toEqual(new Array(20).fill(1));
    // Zero pages cost no payload: one ZERO record covers any run of them.
    const zero = referenceDecode(encodeSnapshot(new Uint8Array(64 * 50), { pageSize: 64, maxRecordPayload: 64 }));
    expect(zero.records.map((r) => [r.tag, r.pages])).toEqual([
      [Tag.ZERO, 50],
      [Tag.END, 0],
    ]);
  });

  test.prop([layoutArb(600, 3), cutsArb], { numRuns: 60 })(
    "any segmentation of the stream into push() chunks decodes like the whole stream, one byte at a time too",
    (layout, cuts) => {
      const state = stateFor(layout);
      const config = state.subarray(0, Math.min(state.length, layout.pageSize));
      const stream = encodeSnapshot(state, { ...encoderOptions(layout), config });
      const whole = createDecoder();
      whole.push(stream, true);
      const wholeResult = whole.result();
      expect(hex(wholeResult)).toBe(hex(state));

      const chunked = createDecoder();
      for (const chunk of chunksOf(stream, cuts)) chunked.push(chunk);
      chunked.push(new Uint8Array(0), true);
      expect(hex(chunked.result())).toBe(hex(state));
      expect(hex(chunked.config!)).toBe(hex(config));
      expect(chunked.summary()).toEqual(whole.summary());

      const bytewise = createDecoder();
      for (let i = 0; i < stream.length; i++) bytewise.push(stream.subarray(i, i + 1));
      bytewise.end();
      expect(hex(bytewise.result())).toBe(hex(state));
      expect(bytewise.summary()).toEqual(whole.summary());
    },
  );

  test.prop([layoutArb(3000, 3), cutsArb, fc.boolean()], { numRuns: 60 })(
    "the streaming encoder's push() with any chunking writes the same bytes as encodeSnapshot",
    (layout, cuts, withConfig) => {
      const state = stateFor(layout);
      const config = withConfig ? Uint8Array.of(1, 2, 3) : undefined;
      const expected = encodeSnapshot(state, { ...encoderOptions(layout), ...(config ? { config } : {}) });

      const out: Uint8Array[] = [];
      const finals: boolean[] = [];
      const encoder = createEncoder({
        ...encoderOptions(layout),
        ondata: (chunk, final) => {
          out.push(chunk);
          finals.push(final);
        },
      });
      const chunks = chunksOf(
        state,
        cuts.map((c) => c * 7),
      );
      if (config) {
        for (const chunk of chunks) encoder.push(chunk);
        encoder.writeConfig(config);
        encoder.end();
      } else {
        chunks.forEach((chunk, i) => encoder.push(chunk, i === chunks.length - 1));
        if (chunks.length === 0) encoder.push(new Uint8Array(0), true);
      }
      expect(hex(concat(...out))).toBe(hex(expected));
      expect(finals.at(-1)).toBe(true);
      expect(finals.slice(0, -1)).not.toContain(true);
      expect(encoder.summary()).toEqual(encodeSnapshotWithSummary(state, { ...encoderOptions(layout), ...(config ? { config } : {}) }).summary);
    },
  );

  test("push() refuses more bytes than the state, and a short state", () => {
    const encoder = createEncoder({ size: 100, pageSize: 64, ondata: () => {} });
    encoder.push(new Uint8Array(60));
    expect(() => encoder.push(new Uint8Array(41))).toThrow(MigrationError);
    const short = createEncoder({ size: 100, pageSize: 64, ondata: () => {} });
    short.push(new Uint8Array(99));
    expect(() => short.push(new Uint8Array(0), true)).toThrow(/99 of 100/);
    short.abort();
    encoder.abort();
  });
});

describe("incremental streams", () => {
  test.prop([layoutArb(2000, 3), fc.constantFrom(...CHANGES), fc.integer()], { numRuns: 120 })(
    "decode onto the base gives the new state; clean pages are skipped, small changes are deltas",
    (layout, change, seed) => {
      const base = stateFor(layout);
      const next = mutate(base, seed, change, layout.pageSize);
      const { stream, summary } = encodeSnapshotWithSummary(next, { ...encoderOptions(layout), base });

      const ref = referenceDecode(stream, base);
      expect(ref.base).toBe(xxh3(base));
      expect(hex(ref.state)).toBe(hex(next));
      checkEncoderChoices(ref);

      const baseCopy = base.slice();
      const decoder = createDecoder({ base: baseCopy });
      decoder.push(stream, true);
      expect(hex(decoder.result())).toBe(hex(next));
      expect(hex(baseCopy)).toBe(hex(base));
      decoderSummaryMatches(decoder, ref, stream);

      // Page accounting: every page is clean (equal to the base) or sent once.
      let clean = 0;
      let start = 0;
      for (const r of layout.regions) {
        for (let at = 0; at < r.size; at += layout.pageSize) {
          const end = start + Math.min(r.size, at + layout.pageSize);
          if (hex(base.subarray(start + at, end)) === hex(next.subarray(start + at, end))) clean++;
        }
        start += r.size;
      }
      const pages = pagesOf(layout.regions, layout.pageSize);
      expect(summary.pages.clean).toBe(clean);
      expect(summary.pages.raw + summary.pages.zero + summary.pages.delta).toBe(pages - clean);
      expect(ref.pages).toEqual({ raw: summary.pages.raw, lz4: summary.pages.lz4, zero: summary.pages.zero, delta: summary.pages.delta });
      if (change === "none") expect(ref.records.map((r) => r.tag)).toEqual([Tag.END]);
      // A few changed bytes in a full page of 128 or more always make a smaller delta: only a
      // short last page of a region may have to go raw.
      if (change === "sparse" && layout.pageSize >= 128) expect(summary.pages.raw).toBeLessThanOrEqual(layout.regions.length);

      // Only onto its base.
      expect(() => decodeSnapshot(stream)).toThrow(expect.objectContaining({ code: "ESTALE" }));
      if (base.length > 0) {
        const other = base.slice();
        other[0] = other[0]! ^ 1;
        expect(() => decodeSnapshot(stream, { base: other })).toThrow(expect.objectContaining({ code: "ESTALE" }));
      }
    },
  );

  test("delta and skipClean can be turned off per call", () => {
    const base = makeState(64 * 6, 5, "random", 64);
    const next = mutate(base, 6, "sparse", 64);
    const variants = [
      { delta: false, skipClean: true },
      { delta: true, skipClean: false },
      { delta: false, skipClean: false },
    ];
    for (const v of variants) {
      const out: Uint8Array[] = [];
      const encoder = createEncoder({ size: base.length, pageSize: 64, baseDigest: xxh3(base), ondata: (c) => out.push(c) });
      encoder.writePages(0, 0, next, { shadow: base.slice(), ...v });
      encoder.end();
      const s = encoder.summary();
      const ref = referenceDecode(concat(...out), base);
      expect(hex(ref.state)).toBe(hex(next));
      if (!v.delta) expect(s.pages.delta).toBe(0);
      if (!v.skipClean) expect(s.pages.clean).toBe(0);
      // Without skipping, unchanged pages go as empty deltas (n = 0) or raw.
      expect(s.pages.raw + s.pages.zero + s.pages.delta + s.pages.clean).toBe(6);
    }
  });
});

// ---------------------------------------------------------------------------------------------

const roundsArb = fc.record({
  changes: fc.array(
    fc.record({
      change: fc.constantFrom(...CHANGES),
      seed: fc.integer(),
      dirtyOnly: fc.boolean(),
      dirtyBytes: fc.integer({ min: 0, max: 1 << 20 }),
    }),
    { minLength: 1, maxLength: 4 },
  ),
});

/** Bitmap of the pages of `a` and `b` (one region) that differ. */
function dirtyBitmap(a: Uint8Array, b: Uint8Array, pageSize: number): Uint8Array {
  const pages = Math.ceil(a.length / pageSize);
  const bitmap = new Uint8Array(Math.ceil(pages / 8));
  for (let p = 0; p < pages; p++) {
    const from = p * pageSize;
    const to = Math.min(a.length, from + pageSize);
    if (hex(a.subarray(from, to)) !== hex(b.subarray(from, to))) bitmap[p >> 3] = bitmap[p >> 3]! | (1 << (p & 7));
  }
  return bitmap;
}

describe("multi-round streams", () => {
  test.prop([layoutArb(1200, 3), roundsArb, fc.boolean(), fc.option(fc.uint8Array({ maxLength: 64 }), { nil: undefined })], {
    numRuns: 80,
  })("pre-copy rounds with a shadow (deltas against pages sent earlier in the stream) decode to the last state", (layout, plan, incremental, config) => {
    const { regions, pageSize } = layout;
    const base = stateFor(layout);
    let state: Uint8Array = base.slice();
    const shadow = base.slice(); // what the receiver holds, per the sender
    const out: Uint8Array[] = [];
    const encoder = createEncoder({
      ...encoderOptions(layout),
      ...(incremental ? { baseDigest: xxh3(base) } : {}),
      ondata: (c) => out.push(c),
    });
    const starts: number[] = [];
    regions.reduce((n, r) => (starts.push(n), n + r.size), 0);
    const each = (fn: (i: number, from: number, to: number) => void): void => regions.forEach((r, i) => fn(i, starts[i]!, starts[i]! + r.size));

    const stats: RoundStats[] = [];
    if (!incremental) {
      // Round 0 of a full stream: the receiver holds nothing, every page goes as it is.
      each((i, from, to) =>
        encoder.writePages(i, 0, state.subarray(from, to), { shadow: shadow.subarray(from, to), updateShadow: true, delta: false, skipClean: false }),
      );
      stats.push(encoder.endRound(0));
    }
    for (const step of plan.changes) {
      const nextState = mutate(state, step.seed, step.change, pageSize);
      each((i, from, to) => {
        const dirty = step.dirtyOnly ? dirtyBitmap(state.subarray(from, to), nextState.subarray(from, to), pageSize) : undefined;
        encoder.writePages(i, 0, nextState.subarray(from, to), {
          shadow: shadow.subarray(from, to),
          updateShadow: true,
          ...(dirty ? { dirty } : {}),
        });
      });
      state = nextState;
      expect(hex(shadow)).toBe(hex(state)); // updateShadow: the shadow now holds what was sent
      stats.push(encoder.endRound(step.dirtyBytes));
    }
    if (config) encoder.writeConfig(config);
    encoder.end();
    const stream = concat(...out);
    const summary: EncoderSummary = encoder.summary();

    const ref = referenceDecode(stream, incremental ? base : undefined);
    expect(hex(ref.state)).toBe(hex(state));
    checkEncoderChoices(ref);
    expect(ref.rounds).toEqual(stats);
    expect(stats.map((s) => s.round)).toEqual(stats.map((_, i) => i));
    // ROUND fields per FORMAT.md 3.5: pages of the page records since the previous ROUND, and
    // stream bytes from the end of the previous ROUND (or of the header) to the end of this one.
    let since = ref.headerLength;
    let pages = 0;
    let k = 0;
    for (const r of ref.records) {
      if (r.tag === Tag.PAGES || r.tag === Tag.ZERO || r.tag === Tag.DELTA) pages += r.pages;
      if (r.tag === Tag.ROUND) {
        const end = r.at + r.bytes.length;
        expect(stats[k]).toMatchObject({ pages, bytes: end - since });
        since = end;
        pages = 0;
        k++;
      }
    }
    expect(k).toBe(stats.length);
    expect(summary.rounds).toBe(stats.length);
    expect(summary.config).toBe(config !== undefined);
    expect(summary.bytes).toBe(stream.length);
    expect(summary.records).toBe(ref.records.length);
    expect(ref.pages).toEqual({ raw: summary.pages.raw, lz4: summary.pages.lz4, zero: summary.pages.zero, delta: summary.pages.delta });

    const decoder = createDecoder({ ...(incremental ? { base } : {}), regions, ...(config ? { requireConfig: true } : {}) });
    for (const chunk of chunksOf(stream, [13, 64, 1, 200])) decoder.push(chunk);
    decoder.end();
    expect(hex(decoder.result())).toBe(hex(state));
    expect(decoder.rounds).toEqual(stats);
    if (config) expect(hex(decoder.config!)).toBe(hex(config));
    else expect(decoder.config).toBeUndefined();
    decoderSummaryMatches(decoder, ref, stream);
  });

  test("a page sent raw, then as a delta, then zeroed, then raw again in later rounds", () => {
    const pageSize = 64;
    const states = [makeState(256, 1, "random", 64)];
    const a = states[0]!.slice();
    a[70] = a[70]! ^ 0xff; // page 1: small change -> delta
    states.push(a);
    const b = a.slice();
    b.fill(0, 64, 128); // page 1 zeroed
    states.push(b);
    const c = b.slice();
    c.set(makeState(64, 2, "random", 64), 64); // page 1 rewritten (no usable delta against zeros)
    states.push(c);
    const shadow = new Uint8Array(256);
    const out: Uint8Array[] = [];
    const encoder = createEncoder({ size: 256, pageSize, ondata: (x) => out.push(x) });
    encoder.writePages(0, 0, states[0]!, { shadow, updateShadow: true, delta: false, skipClean: false });
    encoder.endRound();
    for (const s of states.slice(1)) {
      encoder.writePages(0, 0, s, { shadow, updateShadow: true });
      encoder.endRound();
    }
    encoder.end();
    const stream = concat(...out);
    const ref = referenceDecode(stream);
    const kinds = ref.records.filter((r) => r.tag <= Tag.DELTA).map((r) => [r.tag, Number(r.offset) / 64, r.pages]);
    expect(kinds).toEqual([
      [Tag.PAGES, 0, 4],
      [Tag.DELTA, 1, 1],
      [Tag.ZERO, 1, 1],
      [Tag.PAGES, 1, 1],
    ]);
    expect(hex(decodeSnapshot(stream))).toBe(hex(c));
    expect(encoder.summary().pages).toEqual({ raw: 5, lz4: 0, zero: 1, delta: 1, clean: 9 });
  });
});

describe("config blob", () => {
  test.prop([fc.uint8Array({ maxLength: 300 }), fc.constantFrom("xxh3" as const, "crc32c" as const)], { numRuns: 40 })(
    "is carried verbatim (up to the record limit)",
    (config, checksum) => {
      const state = makeState(200, 4, "mixed", 64);
      const maxRecordPayload = Math.max(64, config.length);
      const stream = encodeSnapshot(state, { pageSize: 64, maxRecordPayload, checksum, config });
      const decoder = createDecoder({ requireConfig: true });
      decoder.push(stream, true);
      expect(hex(decoder.config!)).toBe(hex(config));
      expect(hex(decoder.result())).toBe(hex(state));
      expect(hex(referenceDecode(stream).config!)).toBe(hex(config));
    },
  );

  test("a blob above the record limit and a second blob are refused by the encoder", () => {
    const encoder = createEncoder({ size: 64, pageSize: 64, maxRecordPayload: 100, ondata: () => {} });
    expect(() => encoder.writeConfig(new Uint8Array(101))).toThrow(expect.objectContaining({ code: "EINVAL" }));
    encoder.writeConfig(new Uint8Array(100));
    expect(() => encoder.writeConfig(new Uint8Array(1))).toThrow(expect.objectContaining({ code: "EINVAL" }));
    encoder.abort();
  });
});

/**
 * Uses up the core's free memory, so that the next allocation of more than 64 KiB grows it
 * (and detaches every view of it); returns a function that gives the memory back.
 */
function exhaustCoreMemory(): () => void {
  const c = core();
  const blocks: number[] = [];
  for (const size of [1 << 20, 1 << 16]) {
    const before = c.memory.buffer.byteLength;
    while (c.memory.buffer.byteLength === before) blocks.push(c.alloc(size));
  }
  return () => blocks.forEach((b) => c.free(b));
}

/** `fn` run with core memory about to grow: views of core memory it is given get detached. */
function atGrowth<T>(fn: () => T): T {
  const release = exhaustCoreMemory();
  try {
    return fn();
  } finally {
    release();
  }
}

describe("large states and core-resident data", () => {
  const same = (a: Uint8Array, b: Uint8Array): boolean => Buffer.compare(a, b) === 0;

  test("states above the staging window: push() in odd chunks writes the same bytes as encodeSnapshot", () => {
    for (const pageSize of [64, 4096]) {
      const state = makeState((5 << 19) + 77, pageSize, "mixed", pageSize); // 2.5 MiB + 77
      const regions = [
        { name: "a", size: 3 << 19 },
        { name: "b", size: state.length - (3 << 19) },
      ];
      const expected = encodeSnapshot(state, { regions, pageSize });
      expect(same(decodeSnapshot(expected), state)).toBe(true);
      const out: Uint8Array[] = [];
      const encoder = createEncoder({ regions, pageSize, ondata: (c) => out.push(c) });
      for (let at = 0, i = 0; at < state.length; i++) {
        const n = [1, 333_333, 7, 1 << 20, 4095][i % 5]!;
        encoder.push(state.subarray(at, at + n));
        at += n;
      }
      encoder.end();
      expect(same(concat(...out), expected)).toBe(true);
    }
  });

  test("states, bases and streams in core memory (CoreBuffer views) are encoded and decoded in place, even as memory grows", () => {
    const pageSize = 4096;
    const base = makeState((3 << 20) + 5, 11, "mixed", pageSize);
    const state = mutate(base, 12, "mixed", pageSize);
    const inCore = (data: Uint8Array) => {
      const buffer = allocate(data.length);
      buffer.bytes.set(data);
      return buffer;
    };
    const stateBuf = inCore(state);
    const baseBuf = inCore(base);
    const full = atGrowth(() => encodeSnapshot(stateBuf.bytes, { pageSize }));
    expect(same(referenceDecode(full).state, state)).toBe(true);
    const expected = encodeSnapshot(state, { pageSize, base });
    const mixed = [
      atGrowth(() => encodeSnapshot(stateBuf.bytes, { pageSize, base })),
      atGrowth(() => encodeSnapshot(state, { pageSize, base: baseBuf.bytes })),
      atGrowth(() => encodeSnapshot(stateBuf.bytes, { pageSize, base: baseBuf.bytes })),
    ];
    // Records do not depend on where the data lived.
    for (const stream of mixed) expect(same(stream, expected)).toBe(true);
    expect(
      same(
        atGrowth(() => decodeSnapshot(expected, { base: baseBuf.bytes })),
        state,
      ),
    ).toBe(true);

    // The stream itself in core memory, read in place; the decoder's allocations grow memory.
    const streamBuf = inCore(expected);
    const decoder = createDecoder({ base: baseBuf.bytes });
    atGrowth(() => {
      decoder.push(streamBuf.bytes.subarray(0, 1000));
      decoder.push(streamBuf.bytes.subarray(1000), true);
    });
    expect(same(decoder.result(), state)).toBe(true);
    expect(same(baseBuf.bytes, base)).toBe(true);
    expect(same(stateBuf.bytes, state)).toBe(true);
    for (const b of [stateBuf, baseBuf, streamBuf]) b.free();
  });
});

describe("core-resident chunks through a live pipeline", () => {
  test("an encoder pushing a CoreBuffer's bytes straight into a decoder (whose allocations grow core memory)", () => {
    const regions = [
      { name: "a", size: 70_000 },
      { name: "b", size: 50_001 },
    ];
    const state = makeState(120_001, 3, "mixed", 4096);
    const buffer = allocate(state.length);
    buffer.bytes.set(state);
    const decoder = createDecoder({ regions });
    const encoder = createEncoder({ regions, pageSize: 4096, ondata: (chunk, final) => decoder.push(chunk, final) });
    const release = exhaustCoreMemory();
    try {
      encoder.push(buffer.bytes, true);
    } finally {
      release();
    }
    expect(Buffer.compare(decoder.result(), state)).toBe(0);
    buffer.free();
  });
});

describe("core memory", () => {
  test("encoding and decoding give back every block they take", () => {
    const c = core();
    const state = makeState(5000, 8, "mixed", 256);
    decodeSnapshot(encodeSnapshot(state, { pageSize: 256, base: state.slice() }), { base: state }); // warm up
    const before = c.allocatedBytes;
    for (let i = 0; i < 3; i++) {
      const base = mutate(state, i, "mixed", 256);
      const stream = encodeSnapshot(state, { pageSize: 256, base, config: Uint8Array.of(i) });
      expect(hex(decodeSnapshot(stream, { base }))).toBe(hex(state));
    }
    expect(c.allocatedBytes).toBe(before);
  });
});
