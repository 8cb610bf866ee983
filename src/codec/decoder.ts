// The stream decoder: push-style, any segmentation, O(max record) buffered. Framing, checksum
// verification and in-memory application run in the Wasm kernel (assembly/decode.ts) over a
// window of stream bytes; this class feeds the window, handles the header and the records the
// kernel hands back (config, round markers, end), and decides when the stream is complete.
import { MigrationError } from "../core/errors.js";
import { core, guarded, type Core } from "../core/instance.js";
import { xxh3 } from "../core/xxh3.js";
import { DEFAULT_LIMITS, HEADER_FIXED, HEADER_PREFIX, RECORD_OVERHEAD, TAG_CONFIG, TAG_ROUND } from "../format/constants.js";
import { checkMagic, parseHeader, parseHeaderPrefix, type RegionSpec, type StreamHeader } from "../format/header.js";
import { kernelError } from "./decode-errors.js";
import {
  ContextView,
  Dec,
  DECODE_END,
  DECODE_NEED_MORE,
  DECODE_NEED_SCRATCH,
  DECODE_NEED_STAGING,
  DECODE_RECORD,
  DecMode,
  Region,
  stableView,
} from "./contexts.js";

export interface DecoderLimits {
  /** Largest state a stream may declare. Default 1 GiB. */
  maxStateSize?: number;
  /** Largest record payload accepted. Default 16 MiB. */
  maxRecordPayload?: number;
  /** Largest header accepted. Default 64 KiB. */
  maxHeaderSize?: number;
  /**
   * Most pages the stream's page records may make the target write, in total. ZERO pages the
   * target already holds as zeros do not count (repeated zero coverage is absorbed). Default:
   * the state's pages times (3 + the round markers seen so far), which every stream the
   * encoder writes stays within (see docs/FORMAT.md, limits).
   */
  maxPagesApplied?: number;
}

export interface DecoderOptions extends DecoderLimits {
  /** The previous state, for incremental streams (they decode only onto their base). */
  base?: Uint8Array;
  /**
   * The identity (XXH3-64) of the base the target already starts from, computed only if the
   * stream turns out incremental: for targets that are the base themselves (a device, a file).
   */
  baseDigest?: (header: StreamHeader) => bigint;
  /** Device compatibility id the stream must carry (checked when given). */
  deviceId?: string;
  /** Region layout the stream must have (checked when given). */
  regions?: readonly RegionSpec[];
  /** Refuse a stream without a config record. */
  requireConfig?: boolean;
}

/** A verified page record handed to a target that applies records itself (files). */
export interface DataRecord {
  tag: number;
  region: number;
  offset: number;
  pages: number;
  /** View into core memory, valid only during the call. */
  payload: Uint8Array;
  /**
   * For pages that came LZ4-compressed (a 1.1 LZ4 record, handed out decoded with tag PAGES):
   * the record's payload bytes on the wire. Undefined otherwise.
   */
  packed?: number;
}

/** A region the kernel applies records into, in core memory. */
export interface StagingRegion {
  /**
   * The staging block (region size), or 0: the plan's `stage` makes it when a record first
   * writes into the region (pages of a region without staging are zeros until then).
   */
  ptr: number;
  /** True if the block holds only zeros (fresh memory): ZERO records over it cost nothing. */
  zeroed: boolean;
  /**
   * Copy-on-write from a base in core memory: `base` is the region's starting content and
   * `chunks` a zeroed bitmap (one bit per chunk) of chunks already copied into the block. Each
   * chunk is copied the first time a record writes into it, unless the record replaces it
   * whole; chunks never written stay only in the base.
   */
  cow?: { base: number; chunks: number };
}

/** What a target's `open` tells the decoder. */
export interface TargetPlan {
  /** Regions to apply into; without them every verified page record goes to `apply`. */
  staging?: StagingRegion[];
  /** log2 of the copy-on-write chunk size (staging with `cow`). */
  chunkShift?: number;
  /**
   * For `apply` targets: ZERO records come only over runs of pages not already known to hold
   * zeros (repeated coverage is absorbed); `startsZeroed` says every page starts as zeros.
   */
  zeroRuns?: { startsZeroed: boolean };
  /**
   * Makes region i's staging block when a record first writes into it (regions given with
   * ptr 0); `zeroed` says whether it holds zeros (otherwise its content is unspecified).
   */
  stage?: (region: number) => { ptr: number; zeroed: boolean };
}

/**
 * Where decoded pages go. `open` returns the staging regions in core memory for the kernel to
 * apply into (as a plan, or as bare pointers to blocks of unknown content), or undefined to
 * receive each verified page record through `apply`.
 */
export interface DecodeTarget {
  open(header: StreamHeader): TargetPlan | number[] | undefined;
  apply?(record: DataRecord): void;
  commit(): void;
  abort(): void;
}

export interface RoundInfo {
  round: number;
  pages: number;
  bytes: number;
  dirtyBytes: number;
}

export interface DecoderSummary {
  header: StreamHeader | undefined;
  records: { pages: number; lz4: number; zero: number; delta: number; config: number; round: number; skipped: number; end: number };
  pages: { raw: number; lz4: number; zero: number; delta: number };
  /** LZ4 records' payload bytes on the wire (their ratio: this over pages.lz4 × page size). */
  compressedBytes: number;
  rounds: RoundInfo[];
  /** Stream bytes consumed. */
  bytes: number;
  /** Stream bytes per state byte (smaller is better); undefined before the header. */
  ratio: number | undefined;
  ended: boolean;
  /** Pages the target was made to write (absorbed zero coverage excluded), and base bytes copied on write. */
  work: { pagesApplied: number; bytesCopied: number };
}

type Phase = "header" | "records" | "done" | "failed";

/** Offset of the base identity field in a 1.x header. */
const BASE_IDENTITY_AT = 40;
const utf8 = new TextEncoder();
const utf8Length = (text: string): number => utf8.encode(text).length;

/** What a decoder holds once its stream opened: released by the registry if it is dropped unfinished. */
interface HeldMemory {
  core: Core;
  ptrs: number[];
  target: DecodeTarget;
}

/**
 * A decoder dropped without end() or abort() (a peer that went away, a caller that forgot)
 * still gives its core memory and its target's staging back, once it is garbage-collected.
 */
const unfinished = new FinalizationRegistry<HeldMemory>((held) => {
  for (const ptr of held.ptrs) held.core.free(ptr);
  held.target.abort();
});

/**
 * The key of `using` disposal: Symbol.dispose where the runtime has it (Node 20.4+, Deno, Bun,
 * recent browsers), else the registered symbol Node uses for it; never a polyfill.
 */
const disposeKey: typeof Symbol.dispose = Symbol.dispose ?? (Symbol.for("nodejs.dispose") as typeof Symbol.dispose);

/** The record window's first size; it doubles as larger records arrive. */
const FIRST_WINDOW = 256 * 1024;

export class StreamDecoder {
  readonly #options: DecoderOptions;
  /** The base; a view of core memory is detached when memory grows (reading the header may). */
  readonly #base: (() => Uint8Array) | undefined;
  readonly #limits: Required<Omit<DecoderLimits, "maxPagesApplied">>;
  readonly #maxPagesApplied: number | undefined;
  readonly #target: DecodeTarget;
  readonly #core: Core;
  #phase: Phase = "header";
  #error: MigrationError | undefined;
  #headerBytes: Uint8Array = new Uint8Array(HEADER_PREFIX);
  #headerHave = 0;
  #header: StreamHeader | undefined;
  #ctx: ContextView | undefined;
  #regions = 0;
  #haves: number[] = [];
  #stage: TargetPlan["stage"];
  #pageSize = 0;
  #win = 0;
  #winCap = 0;
  /** The largest the window may grow: one record of the header's maximum size. */
  #winMax = 0;
  #held: HeldMemory | undefined;
  #winLen = 0;
  /** Where LZ4 records are decoded for targets that apply records themselves. */
  #lz4Scratch = 0;
  /** Stream offset of the window's first byte. */
  #winStart = 0;
  #consumed = 0;
  #config: Uint8Array | undefined;
  readonly rounds: RoundInfo[] = [];
  #configs = 0;

  /** `on`: the core to decode in (the worker pool's; default the process's core). */
  constructor(target: DecodeTarget, options: DecoderOptions = {}, on?: Core) {
    this.#options = options;
    this.#base = options.base && stableView(options.base);
    this.#limits = {
      maxStateSize: options.maxStateSize ?? DEFAULT_LIMITS.maxStateSize,
      maxRecordPayload: options.maxRecordPayload ?? DEFAULT_LIMITS.maxRecordPayload,
      maxHeaderSize: options.maxHeaderSize ?? DEFAULT_LIMITS.maxHeaderSize,
    };
    this.#maxPagesApplied = options.maxPagesApplied;
    for (const [name, value] of Object.entries({ ...this.#limits, maxPagesApplied: options.maxPagesApplied ?? 0 })) {
      if (!Number.isSafeInteger(value) || value < 0) throw new MigrationError("EINVAL", `decoder limit ${name} must be a non-negative integer, got ${value}`);
    }
    this.#target = target;
    this.#core = on ?? core();
  }

  /**
   * Hands the kernel checks done ahead for the next records (assembly/parallel.ts
   * precheck_records: `count` entries at `table` in this decoder's core), used by the worker pool.
   */
  precheck(table: number, count: number): void {
    const ctx = this.#ctx;
    if (!ctx) return;
    ctx.setU32(Dec.PRE, table);
    ctx.setU32(Dec.PRE_COUNT, count);
    ctx.setU32(Dec.PRE_NEXT, 0);
  }

  /** The stream header, once read and verified. */
  get header(): StreamHeader | undefined {
    return this.#header;
  }

  /** The device config blob, if the stream carried one. */
  get config(): Uint8Array | undefined {
    return this.#config;
  }

  /** True once the whole stream verified and the target was committed. */
  get done(): boolean {
    return this.#phase === "done";
  }

  /** Feeds stream bytes; `final` ends the stream after them. Throws MigrationError on bad input. */
  push(chunk: Uint8Array, final = false): void {
    this.#live();
    try {
      let at = 0;
      const c = this.#core;
      const length = chunk.length;
      const inCore = c.owns(chunk);
      const ptr = chunk.byteOffset;
      if (this.#phase === "header") at = this.#readHeader(chunk);
      // Opening the stream allocates (staging, window), which may grow core memory and detach a
      // chunk that lives there: look it up again by offset so it is still read in place.
      if (inCore && !c.owns(chunk)) chunk = new Uint8Array(c.memory.buffer, ptr, length);
      if (at < chunk.length) this.#feed(chunk, at);
    } catch (error) {
      this.#fail(error);
    }
    if (final) this.end();
  }

  /** Ends the stream: checks it is complete, then commits the target. A no-op once it ended (after `push(last, true)`). */
  end(): void {
    // After push(last, true) the stream is finished already: ending it again changes nothing
    // (the usual Node pattern "push every chunk, then end()" works whatever the last push said).
    if (this.#phase === "done") return;
    this.#live();
    try {
      this.#finish();
    } catch (error) {
      this.#fail(error);
    }
  }

  /** Gives up: the target is left as it was and core memory is released. */
  abort(): void {
    if (this.#phase === "done" || this.#phase === "failed") return;
    this.#fail(new MigrationError("ECANCELED", "decode aborted"), false);
  }

  /** `using decoder = createDecoder()`: aborts at the end of the scope unless the stream ended. */
  [disposeKey](): void {
    this.abort();
  }

  summary(): DecoderSummary {
    const ctx = this.#ctx;
    const n = (field: number): number => (ctx && this.#regions !== 0 ? ctx.u32(field) : (this.#finalCounts?.[field] ?? 0));
    const header = this.#header;
    return {
      header,
      records: {
        pages: n(Dec.REC_RAW),
        lz4: n(Dec.REC_LZ4),
        zero: n(Dec.REC_ZERO),
        delta: n(Dec.REC_DELTA),
        config: this.#configs,
        round: this.rounds.length,
        skipped: n(Dec.REC_SKIPPED),
        end: this.#ended ? 1 : 0,
      },
      pages: { raw: n(Dec.PAGES_RAW), lz4: n(Dec.PAGES_LZ4), zero: n(Dec.PAGES_ZERO), delta: n(Dec.PAGES_DELTA) },
      compressedBytes: ctx && this.#regions !== 0 ? Number(ctx.u64(Dec.LZ4_BYTES)) : (this.#finalCounts?.[Dec.LZ4_BYTES] ?? 0),
      rounds: [...this.rounds],
      bytes: this.#consumed,
      ratio: header && header.totalSize > 0 ? this.#consumed / header.totalSize : undefined,
      ended: this.#ended,
      work: {
        pagesApplied: ctx && this.#regions !== 0 ? Number(ctx.u64(Dec.APPLIED)) : (this.#finalCounts?.[Dec.APPLIED] ?? 0),
        bytesCopied: ctx && this.#regions !== 0 ? Number(ctx.u64(Dec.COPIED)) : (this.#finalCounts?.[Dec.COPIED] ?? 0),
      },
    };
  }

  #ended = false;
  #finalCounts: Record<number, number> | undefined;

  #live(): void {
    if (this.#phase === "failed") throw this.#error!;
    if (this.#phase === "done") throw new MigrationError("EINVAL", "the decoder has already finished");
  }

  #readHeader(chunk: Uint8Array): number {
    let at = 0;
    while (at < chunk.length && this.#phase === "header") {
      const want = this.#headerBytes.length - this.#headerHave;
      const take = Math.min(want, chunk.length - at);
      this.#headerBytes.set(chunk.subarray(at, at + take), this.#headerHave);
      this.#headerHave += take;
      this.#consumed += take;
      at += take;
      if (this.#headerBytes.length === HEADER_PREFIX) checkMagic(this.#headerBytes.subarray(0, this.#headerHave));
      if (this.#headerHave < this.#headerBytes.length) break;
      if (this.#headerBytes.length === HEADER_PREFIX) {
        const length = parseHeaderPrefix(this.#headerBytes, this.#limits.maxHeaderSize);
        const full = new Uint8Array(length);
        full.set(this.#headerBytes);
        this.#headerBytes = full;
      } else {
        this.#open(parseHeader(this.#headerBytes, this.#limits));
      }
    }
    return at;
  }

  #open(header: StreamHeader): void {
    const options = this.#options;
    // Like every stream error, these name a record index (0: none read yet) and the offset of
    // the header field at fault: the device id, the region table, the base identity.
    const idAt = HEADER_FIXED;
    const tableAt = HEADER_FIXED + utf8Length(header.deviceId);
    if (options.deviceId !== undefined && options.deviceId !== header.deviceId) {
      throw new MigrationError("ENODEV", `stream is for device ${JSON.stringify(header.deviceId)}, expected ${JSON.stringify(options.deviceId)}`, {
        recordIndex: 0,
        byteOffset: idAt,
      });
    }
    if (options.regions && !sameLayout(options.regions, header.regions)) {
      throw new MigrationError(
        "ENODEV",
        `stream region table ${describeLayout(header.regions)} does not match the device's ${describeLayout(options.regions)}`,
        {
          recordIndex: 0,
          byteOffset: tableAt,
        },
      );
    }
    if (header.baseDigest !== undefined) {
      const { baseDigest } = options;
      const base = this.#base?.();
      const where = { recordIndex: 0, byteOffset: BASE_IDENTITY_AT };
      if (!base && !baseDigest) throw new MigrationError("ESTALE", "incremental stream: its base state is needed to decode it", where);
      const matches = base ? base.length === header.totalSize && xxh3(base) === header.baseDigest : baseDigest!(header) === header.baseDigest;
      if (!matches) throw new MigrationError("ESTALE", "incremental stream was made against another base state", where);
    }
    const c = this.#core;
    const opened = this.#target.open(header);
    const plan: TargetPlan = Array.isArray(opened) ? { staging: opened.map((ptr) => ({ ptr, zeroed: false })) } : (opened ?? {});
    const staging = plan.staging;
    this.#stage = plan.stage;
    this.#pageSize = header.pageSize;
    const count = header.regions.length;
    const entry = c.exports.region_entry_size();
    this.#regions = c.alloc(entry * count);
    const shift = Math.log2(header.pageSize);
    const ctx = new ContextView(c.memory, c.alloc(c.exports.decode_context_size()));
    this.#ctx = ctx;
    c.u8.fill(0, ctx.ptr, ctx.ptr + c.exports.decode_context_size());
    let statePages = 0;
    header.regions.forEach((region, i) => {
      const pages = Math.ceil(region.size / header.pageSize);
      statePages += pages;
      // Rounded up to 8 bytes: the kernel scans bitmaps 64 bits at a time.
      const bitmapBytes = Math.ceil(pages / 64) * 8;
      const have = c.alloc(bitmapBytes);
      this.#haves.push(have);
      // An incremental stream's target holds every page already (the base); a full stream must
      // deliver every page itself.
      c.u8.fill(header.baseDigest === undefined ? 0 : 0xff, have, have + bitmapBytes);
      // Pages known to hold zeros in the target, so ZERO coverage repeated over the same pages
      // costs only a bitmap scan: staging and apply() targets that take zero runs write only
      // the rest. Targets that take whole records (verify, inspect) count pages the same way,
      // as a target of unknown content would, so every reader gives a stream the same verdict.
      const stage = staging?.[i];
      const zero = c.alloc(bitmapBytes);
      this.#haves.push(zero);
      // Staging not made yet is zeros until a record writes into it (then #staged sees to it).
      const zeroed = stage ? stage.ptr === 0 || (stage.zeroed && !stage.cow) : (plan.zeroRuns?.startsZeroed ?? false);
      c.u8.fill(zeroed ? 0xff : 0, zero, zero + bitmapBytes);
      const r = new ContextView(c.memory, this.#regions + i * entry);
      r.setU64(Region.SIZE, BigInt(region.size));
      r.setU32(Region.STAGING, stage ? stage.ptr : 0);
      r.setU32(Region.HAVE, have);
      r.setU32(Region.PAGES, pages);
      r.setU32(Region.ZERO, zero);
      r.setU32(Region.BASE, stage?.cow?.base ?? 0);
      r.setU32(Region.CHUNKS, stage?.cow?.chunks ?? 0);
    });
    ctx.setU32(Dec.CHUNK_SHIFT, plan.chunkShift ?? 0);
    if (this.#maxPagesApplied !== undefined) {
      ctx.setU64(Dec.BUDGET, BigInt(this.#maxPagesApplied));
    } else {
      ctx.setU64(Dec.BUDGET, BigInt(statePages) * 3n);
      ctx.setU64(Dec.BUDGET_ROUND, BigInt(statePages));
    }
    ctx.setU32(Dec.REGIONS, this.#regions);
    ctx.setU16(Dec.NREGIONS, count);
    ctx.setU8(Dec.ALG, header.checksum === "crc32c" ? 2 : 1);
    ctx.setU8(Dec.SHIFT, shift);
    ctx.setU32(Dec.MAXPAYLOAD, header.maxRecordPayload);
    ctx.setU32(Dec.MODE, (staging ? DecMode.APPLY : plan.zeroRuns ? DecMode.ZERO_RUNS : 0) | (header.compression === "lz4" ? DecMode.LZ4 : 0));

    ctx.setU64(Dec.DIGEST, header.checksumValue);
    this.#winMax = header.maxRecordPayload + RECORD_OVERHEAD + 64;
    this.#winCap = Math.min(this.#winMax, FIRST_WINDOW);
    this.#win = c.alloc(this.#winCap);
    this.#winStart = header.length;
    this.#header = header;
    this.#phase = "records";
    const ptrs = [ctx.ptr, this.#regions, this.#win, ...this.#haves];
    this.#held = { core: c, ptrs, target: this.#target };
    unfinished.register(this, this.#held, this);
  }

  #feed(chunk: Uint8Array, from: number): void {
    const c = this.#core;
    let at = from;
    if (this.#winLen === 0 && c.owns(chunk)) {
      // Core-resident stream and nothing pending: parse it in place, keep only the tail. Its
      // offset and length are taken once: a target's apply() may allocate, grow core memory and
      // detach the chunk's view (whose byteOffset and length then read 0).
      const ptr = chunk.byteOffset;
      const length = chunk.length;
      const start = this.#winStart;
      const used = this.#run(ptr + at, length - at, start);
      this.#consumed += length - at;
      this.#winStart = start + used;
      at += used;
      const rest = length - at;
      if (rest > 0) {
        if (rest > this.#winCap) this.#grow(rest);
        c.u8.copyWithin(this.#win, ptr + at, ptr + length);
        this.#winLen = rest;
      }
      return;
    }
    // Staging made on a record's first write, and a window that grows, allocate: a chunk that
    // lives in core memory is looked up again by offset afterwards (its view may be detached).
    const inCore = c.owns(chunk);
    const chunkPtr = chunk.byteOffset;
    const chunkLength = chunk.length;
    const view = (): Uint8Array => (inCore && !c.owns(chunk) ? new Uint8Array(c.memory.buffer, chunkPtr, chunkLength) : chunk);
    while (at < chunkLength) {
      if (this.#winLen === this.#winCap) this.#grow(this.#winCap + 1);
      chunk = view();
      const take = Math.min(this.#winCap - this.#winLen, chunkLength - at);
      c.u8.set(chunk.subarray(at, at + take), this.#win + this.#winLen);
      this.#winLen += take;
      this.#consumed += take;
      at += take;
      const used = this.#run(this.#win, this.#winLen, this.#winStart);
      if (used > 0) {
        c.u8.copyWithin(this.#win, this.#win + used, this.#win + this.#winLen);
        this.#winLen -= used;
        this.#winStart += used;
      }
    }
  }

  /**
   * Grows the window to at least `need` bytes (doubling), up to the largest record the header
   * allows: it holds the part of a record not received yet, so it grows with records that
   * arrived, not with the header's maximum record size.
   */
  #grow(need: number): void {
    const c = this.#core;
    const cap = Math.min(this.#winMax, Math.max(need, this.#winCap * 2));
    if (cap < need) throw new MigrationError("EBADMSG", "internal: record larger than the window");
    const next = c.alloc(cap);
    c.u8.copyWithin(next, this.#win, this.#win + this.#winLen);
    c.free(this.#win);
    if (this.#held) this.#held.ptrs[this.#held.ptrs.indexOf(this.#win)] = next;
    this.#win = next;
    this.#winCap = cap;
  }

  /** Runs the kernel over [ptr, ptr+len) (stream offset `streamPos`); returns bytes consumed. */
  #run(ptr: number, len: number, streamPos: number): number {
    const ctx = this.#ctx!;
    ctx.setU32(Dec.IN, ptr);
    ctx.setU32(Dec.INLEN, len);
    ctx.setU32(Dec.POS, 0);
    ctx.setU64(Dec.STREAMPOS, BigInt(streamPos));
    const own = this.#core;
    return (own === core() ? guarded : <T>(fn: (c: Core) => T): T => fn(own))((c) => {
      for (;;) {
        const status = c.exports.decode_window(ctx.ptr);
        if (status === DECODE_NEED_MORE) return ctx.u32(Dec.POS);
        if (status < 0) {
          const pos = ctx.u32(Dec.POS);
          throw kernelError(status, ctx.u32(Dec.ERR_RECORD), Number(ctx.u64(Dec.ERR_OFFSET)), c.u8[ptr + pos]);
        }
        if (status === DECODE_END) this.#ended = true;
        else if (status === DECODE_RECORD) this.#record(c);
        else if (status === DECODE_NEED_STAGING) this.#staged(c, ctx.u16(Dec.R_REGION));
        else if (status === DECODE_NEED_SCRATCH) {
          // The first LZ4 record for a target that takes decoded records: room for the largest.
          this.#lz4Scratch = c.alloc(this.#header!.maxRecordPayload);
          this.#held?.ptrs.push(this.#lz4Scratch);
          ctx.setU32(Dec.LZ4_SCRATCH, this.#lz4Scratch);
        }
      }
    });
  }

  /**
   * A record is about to write into region `i` for the first time: its staging is made now. A
   * block that does not hold zeros (reused memory) gets zeros where earlier ZERO records were
   * absorbed (pages held and known zero); pages not delivered yet stop being known zero, so a
   * later ZERO record over them writes.
   */
  #staged(c: Core, i: number): void {
    const made = this.#stage!(i);
    const entry = new ContextView(c.memory, this.#regions + i * c.exports.region_entry_size());
    entry.setU32(Region.STAGING, made.ptr);
    if (made.zeroed) return;
    const pages = entry.u32(Region.PAGES);
    const size = Number(entry.u64(Region.SIZE));
    const words = Math.ceil(pages / 64) * 2;
    const have = new Uint32Array(c.memory.buffer, this.#haves[2 * i]!, words);
    const zero = new Uint32Array(c.memory.buffer, this.#haves[2 * i + 1]!, words);
    const u8 = c.u8;
    const pageSize = this.#pageSize;
    let run = -1;
    const close = (end: number): void => {
      if (run >= 0) u8.fill(0, made.ptr + run * pageSize, made.ptr + Math.min(end * pageSize, size));
      run = -1;
    };
    for (let w = 0; w < words; w++) {
      const known = (zero[w]! & have[w]!) >>> 0;
      zero[w] = known;
      const first = w * 32;
      if (known === 0xffffffff) {
        if (run < 0) run = first;
        continue;
      }
      if (known === 0) {
        close(first);
        continue;
      }
      for (let b = 0; b < 32; b++) {
        if (known & (1 << b)) {
          if (run < 0) run = first + b;
        } else close(first + b);
      }
    }
    close(pages);
  }

  #record(c: Core): void {
    const ctx = this.#ctx!;
    const tag = ctx.u8(Dec.R_TAG);
    const payloadPtr = ctx.u32(Dec.R_PAYLOAD);
    const length = ctx.u32(Dec.R_LEN);
    const payload = c.u8.subarray(payloadPtr, payloadPtr + length);
    if (tag === TAG_CONFIG) {
      this.#config = payload.slice();
      this.#configs++;
    } else if (tag === TAG_ROUND) {
      const view = new DataView(payload.buffer, payload.byteOffset, length);
      this.rounds.push({
        round: view.getUint32(0, true),
        pages: Number(view.getBigUint64(8, true)),
        bytes: Number(view.getBigUint64(16, true)),
        dirtyBytes: Number(view.getBigUint64(24, true)),
      });
    } else {
      const packed = ctx.u32(Dec.R_PACKED);
      this.#target.apply!({
        tag,
        region: ctx.u16(Dec.R_REGION),
        offset: Number(ctx.u64(Dec.R_OFFSET)),
        pages: ctx.u32(Dec.R_PAGES),
        payload,
        ...(packed !== 0 ? { packed } : {}),
      });
    }
  }

  #finish(): void {
    if (this.#phase === "header") {
      throw new MigrationError("ENODATA", `incomplete stream: it ends inside the header, after ${this.#consumed} bytes`, {
        byteOffset: this.#consumed,
        recordIndex: 0,
      });
    }
    const ctx = this.#ctx!;
    const recordIndex = ctx.u32(Dec.SEQ);
    if (!this.#ended) {
      const message =
        this.#winLen > 0
          ? `it ends at byte ${this.#consumed}, inside record ${recordIndex} (which began at byte ${this.#winStart}), without an end-of-stream record`
          : recordIndex === 0
            ? `it ends right after its header (byte ${this.#consumed}), before any record`
            : `it ends at byte ${this.#consumed}, after record ${recordIndex - 1}, without an end-of-stream record`;
      throw new MigrationError("ENODATA", `incomplete stream: ${message}`, {
        recordIndex,
        byteOffset: this.#consumed,
      });
    }
    const header = this.#header!;
    if (header.baseDigest === undefined) {
      const missing = this.#core.exports.first_missing(this.#regions, header.regions.length);
      if (missing >= 0n) {
        const region = header.regions[Number(missing >> 32n)]!;
        const page = Number(missing & 0xffff_ffffn);
        throw new MigrationError("EBADMSG", `stream ended without page ${page} of region ${JSON.stringify(region.name)}`, {
          recordIndex,
          byteOffset: this.#consumed,
        });
      }
    }
    if (this.#options.requireConfig && this.#config === undefined) {
      throw new MigrationError("EBADMSG", "stream carries no device config, which is required", { recordIndex, byteOffset: this.#consumed });
    }
    this.#target.commit();
    this.#phase = "done";
    this.#release();
  }

  #fail(error: unknown, rethrow = true): void {
    const typed = error instanceof MigrationError ? error : new MigrationError("EIO", `decode failed: ${String(error)}`, { cause: error });
    this.#phase = "failed";
    this.#error = typed;
    this.#target.abort();
    this.#release();
    if (rethrow) throw typed;
  }

  #release(): void {
    unfinished.unregister(this);
    this.#held = undefined;
    const c = this.#core;
    const ctx = this.#ctx;
    if (ctx) {
      this.#finalCounts = {};
      for (const field of [
        Dec.REC_RAW,
        Dec.REC_ZERO,
        Dec.REC_DELTA,
        Dec.REC_SKIPPED,
        Dec.PAGES_RAW,
        Dec.PAGES_ZERO,
        Dec.PAGES_DELTA,
        Dec.REC_LZ4,
        Dec.PAGES_LZ4,
      ]) {
        this.#finalCounts[field] = ctx.u32(field);
      }
      for (const field of [Dec.APPLIED, Dec.COPIED]) this.#finalCounts[field] = Number(ctx.u64(field));
      this.#finalCounts[Dec.LZ4_BYTES] = Number(ctx.u64(Dec.LZ4_BYTES));
      c.free(ctx.ptr);
      this.#ctx = undefined;
    }
    for (const have of this.#haves) c.free(have);
    this.#haves = [];
    if (this.#regions) c.free(this.#regions);
    this.#regions = 0;
    if (this.#winCap) c.free(this.#win);
    this.#winCap = 0;
    if (this.#lz4Scratch) c.free(this.#lz4Scratch);
    this.#lz4Scratch = 0;
  }
}

function sameLayout(a: readonly RegionSpec[], b: readonly RegionSpec[]): boolean {
  return a.length === b.length && a.every((r, i) => r.name === b[i]!.name && r.size === b[i]!.size);
}

function describeLayout(regions: readonly RegionSpec[]): string {
  return regions.map((r) => `${r.name}:${r.size}`).join(",");
}
