// The stream encoder: state in, records out. Page classification and record framing run in
// the Wasm kernel (assembly/encode.ts), one call per window; this class stages inputs that do
// not already live in core memory, drains the output buffer and keeps the stream's totals.
import { MigrationError } from "../core/errors.js";
import { core, guarded, type Core } from "../core/instance.js";
import {
  type ChecksumAlgorithm,
  type Compression,
  DEFAULT_MAX_RECORD_PAYLOAD,
  DEFAULT_PAGE_SIZE,
  END_PAYLOAD,
  RECORD_HEADER,
  RECORD_OVERHEAD,
  ROUND_PAYLOAD,
  TAG_CONFIG,
  TAG_END,
  TAG_ROUND,
} from "../format/constants.js";
import { encodeHeader, type RegionSpec, type StreamHeader } from "../format/header.js";
import { ContextView, Enc, ENCODE_OUTPUT_FULL, EncMode, stableView } from "./contexts.js";

export interface EncoderOptions {
  /** The state's layout. Default: one region named "state" of `size` bytes. */
  regions?: readonly RegionSpec[];
  /** Total state size when `regions` is not given. */
  size?: number;
  /** Page size, a power of two from 64 to 1 MiB. Default 4096. */
  pageSize?: number;
  /** Largest record payload. Default 1 MiB; at least the page size. */
  maxRecordPayload?: number;
  /** Record checksum. Default "xxh3"; "crc32c" for interoperability. */
  checksum?: ChecksumAlgorithm;
  /** Device compatibility id a reader must match. Default "". */
  deviceId?: string;
  /** XXH3-64 of the base state: makes the stream incremental, decodable only onto that base. */
  baseDigest?: bigint;
  /**
   * Page compression: "lz4" sends each run of raw pages as one LZ4 record when that is smaller
   * (a 1.1 stream; 1.0 readers refuse it). Default "none" (a 1.0 stream).
   */
  compress?: Compression;
  /**
   * Receives the stream as it is produced: fresh arrays the callee owns, or with `shared`,
   * views into the encoder's own buffer.
   */
  ondata?: (chunk: Uint8Array, final: boolean) => void;
  /**
   * Hand `ondata` views into the encoder's output buffer instead of copies (msgpack's
   * `encodeSharedRef` convention). A view is valid only until the callback returns: the
   * encoder writes the next bytes over it (and growing core memory detaches it), so copy what
   * must outlive the call (`chunk.slice()`) or consume it synchronously (a hash update, a
   * `writeSync`). Saves a copy and a fresh allocation per chunk. Default false.
   */
  shared?: boolean;
}

/** How to encode one range of a region (see {@link StreamEncoder.writePages}). */
export interface PageWriteOptions {
  /** What the receiver holds for the same range: enables deltas and skipping unchanged pages. */
  shadow?: Uint8Array;
  /** Pages to consider, one bit each (LSB first); others are not sent. Default: all. */
  dirty?: Uint8Array;
  /** XBZRLE-code pages against the shadow when smaller. Default true with a shadow. */
  delta?: boolean;
  /** Do not send pages equal to the shadow. Default true with a shadow. */
  skipClean?: boolean;
  /** Afterwards, make the shadow hold what was sent (the next round's reference). Default false. */
  updateShadow?: boolean;
}

export interface RoundStats {
  round: number;
  /** Pages sent in this round (raw, zero and delta). */
  pages: number;
  /** Stream bytes of this round, its marker included. */
  bytes: number;
  /** Dirty bytes the sender still had when the round ended. */
  dirtyBytes: number;
}

export interface EncoderSummary {
  records: number;
  bytes: number;
  /** Pages by how they went out: raw, LZ4-compressed, zero, delta; clean ones were not sent. */
  pages: { raw: number; lz4: number; zero: number; delta: number; clean: number };
  /** LZ4 records: how many, their payload bytes, and the state bytes they cover. */
  compressed: { records: number; bytes: number; stateBytes: number };
  rounds: number;
  config: boolean;
  stateBytes: number;
  checksum: ChecksumAlgorithm;
}

/** Stream bytes are drained from core memory once this much has accumulated. */
const OUTPUT_WINDOW = 1 << 20;
/** Inputs outside core memory are staged in slices of about this size. */
const STAGE_WINDOW = 1 << 20;

type Sink = (view: Uint8Array, final: boolean) => void;

export class StreamEncoder {
  readonly header: StreamHeader;
  readonly #core: Core;
  readonly #ctx: ContextView;
  readonly #sink: Sink;
  readonly #regionIndex = new Map<string, number>();
  readonly #out: number;
  readonly #outCap: number;
  readonly #scratch: number;
  /** LZ4 hash table and block area (0 without compression). */
  readonly #lz4Scratch: number;
  readonly #compressMode: number;
  #stage = 0;
  #stageCap = 0;
  #headerPending: Uint8Array | undefined;
  #bytes = 0;
  #configSent = false;
  #rounds = 0;
  #roundPagesStart = 0;
  #roundBytesStart = 0;
  #pushRegion = 0;
  #pushOffset = 0;
  #pushPending: Uint8Array | undefined;
  #pushPendingLength = 0;
  #ended = false;

  /** Use {@link createEncoder}; `sink` is an internal fast path that receives views. */
  constructor(options: EncoderOptions = {}, sink?: Sink) {
    const regions = options.regions ?? [{ name: "state", size: options.size ?? -1 }];
    const pageSize = options.pageSize ?? DEFAULT_PAGE_SIZE;
    const { bytes, header } = encodeHeader({
      checksum: options.checksum ?? "xxh3",
      pageSize,
      maxRecordPayload: options.maxRecordPayload ?? Math.max(DEFAULT_MAX_RECORD_PAYLOAD, pageSize),
      deviceId: options.deviceId ?? "",
      baseDigest: options.baseDigest,
      regions,
      compression: options.compress ?? "none",
    });
    this.header = header;
    header.regions.forEach((r, i) => this.#regionIndex.set(r.name, i));
    this.#headerPending = bytes;
    // A round's byte count starts at the end of the previous ROUND record, or of the header for
    // round 0 (FORMAT.md 3.5): the header belongs to no round.
    this.#roundBytesStart = bytes.length;
    if (sink) this.#sink = sink;
    else {
      const ondata = options.ondata;
      if (!ondata) throw new MigrationError("EINVAL", "an encoder needs an ondata callback");
      this.#sink = options.shared ? ondata : (view, final) => ondata(view.slice(), final);
    }

    const c = core();
    this.#core = c;
    this.#outCap = Math.max(OUTPUT_WINDOW, header.maxRecordPayload + RECORD_OVERHEAD) * 2;
    const taken: number[] = [];
    const compress = header.compression === "lz4";
    const sizes = [this.#outCap, pageSize + 64, c.exports.encode_context_size()];
    if (compress) sizes.push(c.exports.encode_lz4_scratch_size(header.maxRecordPayload) >>> 0);
    try {
      for (const size of sizes) taken.push(c.alloc(size));
    } catch (error) {
      // Memory ran out part-way: give back what was taken.
      for (const ptr of taken) c.free(ptr);
      throw error;
    }
    const [out, scratch, ctxPtr, lz4] = taken as [number, number, number, number | undefined];
    this.#out = out;
    this.#scratch = scratch;
    this.#lz4Scratch = lz4 ?? 0;
    this.#compressMode = compress ? EncMode.LZ4 : 0;
    const ctx = new ContextView(c.memory, ctxPtr);
    c.u8.fill(0, ctx.ptr, ctx.ptr + c.exports.encode_context_size());
    ctx.setU32(Enc.OUT, this.#out);
    ctx.setU32(Enc.OUTCAP, this.#outCap);
    ctx.setU32(Enc.PAGE, pageSize);
    ctx.setU32(Enc.MAXPAYLOAD, header.maxRecordPayload);
    ctx.setU8(Enc.ALG, header.checksum === "crc32c" ? 2 : 1);
    ctx.setU32(Enc.SCRATCH, this.#scratch);
    ctx.setU32(Enc.LZ4_SCRATCH, this.#lz4Scratch);
    ctx.setU64(Enc.DIGEST, header.checksumValue);
    this.#ctx = ctx;
  }

  /**
   * Encodes `data`, the bytes of region `region` from byte `offset` (a multiple of the page
   * size; `data` covers whole pages except at the region's end).
   */
  writePages(region: number | string, offset: number, data: Uint8Array, options: PageWriteOptions = {}): void {
    this.#checkOpen();
    // Growing core memory detaches every view of it (which then reads as empty), and it may grow
    // below: the header goes to the sink first (which may allocate), staging, drained windows.
    // So where inputs that live in core memory are is taken now, and their views rebuilt at use.
    const c = this.#core;
    const inPlace = c.owns(data) && (!options.shadow || c.owns(options.shadow)) && (!options.dirty || c.owns(options.dirty));
    const dataNow = stableView(data);
    const shadowNow = options.shadow && stableView(options.shadow);
    const dirtyNow = options.dirty && stableView(options.dirty);
    const total = data.length;
    const index = this.#resolveRegion(region);
    const { name, size } = this.header.regions[index]!;
    const pageSize = this.header.pageSize;
    if (!Number.isSafeInteger(offset) || offset < 0 || offset % pageSize !== 0 || offset + data.length > size) {
      throw new MigrationError(
        "EINVAL",
        `range [${offset}, ${offset + data.length}) is not page-aligned inside region ${JSON.stringify(name)} of ${size} bytes`,
      );
    }
    if (data.length % pageSize !== 0 && offset + data.length !== size) {
      throw new MigrationError("EINVAL", "only the last page of a region may be partial");
    }
    const { shadow, dirty } = options;
    const pages = Math.ceil(data.length / pageSize);
    if (shadow && shadow.length !== data.length) throw new MigrationError("EINVAL", "shadow and data lengths differ");
    if (dirty && dirty.length < Math.ceil(pages / 8)) throw new MigrationError("EINVAL", `dirty bitmap needs ${Math.ceil(pages / 8)} bytes`);
    let mode = this.#compressMode;
    if (shadow) {
      if (options.delta ?? true) mode |= EncMode.DELTA;
      if (options.skipClean ?? true) mode |= EncMode.SKIP_CLEAN;
      if (options.updateShadow ?? false) mode |= EncMode.UPDATE_SHADOW;
    }
    this.#flushHeader();
    const ctx = this.#ctx;
    ctx.setU16(Enc.REGION, index);
    ctx.setU8(Enc.MODE, mode);
    const slice = inPlace ? Math.max(total, 1) : this.#stageSlice();
    guarded(() => {
      // `total`, not data.length: a detached view has length 0, which would end the loop early
      // and silently leave the rest of the range unsent.
      for (let start = 0; start < total || (start === 0 && total === 0); start += slice) {
        const end = Math.min(total, start + slice);
        if (end === start) break;
        const length = end - start;
        let cur: number;
        let sh = 0;
        let bm = 0;
        if (inPlace) {
          cur = dataNow().byteOffset + start;
          if (shadowNow) sh = shadowNow().byteOffset + start;
          if (dirtyNow) bm = dirtyNow().byteOffset + start / pageSize / 8;
        } else {
          const bitmapBytes = Math.ceil(length / pageSize / 8);
          const base = this.#staging(2 * slice + bitmapBytes);
          const u8 = c.u8;
          cur = base;
          u8.set(dataNow().subarray(start, end), cur);
          if (shadowNow) {
            sh = base + slice;
            u8.set(shadowNow().subarray(start, end), sh);
          }
          if (dirtyNow) {
            bm = base + 2 * slice;
            const first = start / pageSize / 8;
            u8.set(dirtyNow().subarray(first, first + bitmapBytes), bm);
          }
        }
        ctx.setU32(Enc.CUR, cur);
        ctx.setU32(Enc.SHADOW, sh);
        ctx.setU32(Enc.BITMAP, bm);
        ctx.setU32(Enc.LEN, length);
        ctx.setU32(Enc.CURSOR, 0);
        ctx.setU64(Enc.OFFSET, BigInt(offset + start));
        while (c.exports.encode_window(ctx.ptr) === ENCODE_OUTPUT_FULL) this.#drain(false);
        if (ctx.u32(Enc.OUTLEN) >= OUTPUT_WINDOW) this.#drain(false);
        if (shadowNow && !inPlace && (mode & EncMode.UPDATE_SHADOW) !== 0) shadowNow().set(c.u8.subarray(sh, sh + length), start);
      }
    });
  }

  /**
   * Feeds the state as one sequence of bytes (regions in header order), in chunks of any size.
   * For full streams; incremental streams go through {@link writePages} with a shadow.
   *
   * Bytes are handed to the kernel in the same windows {@link writePages} stages a whole region
   * in (slices from the region's offset 0), so the stream does not depend on how the state was
   * chunked: pushing it one byte at a time gives the same bytes as one writePages per region
   * (and so as encodeSnapshot). Pages are held back until their window is complete.
   */
  push(chunk: Uint8Array, final = false): void {
    this.#checkOpen();
    const slice = this.#stageSlice();
    // writePages may grow core memory (staging, or a sink that allocates): a chunk that lives
    // there is then detached, and reads as empty. Its length is taken once, its bytes afresh.
    const length = chunk.length;
    const bytes = stableView(chunk);
    let at = 0;
    while (at < length) {
      const region = this.header.regions[this.#pushRegion];
      if (!region) throw new MigrationError("EINVAL", `pushed more bytes than the state's ${this.header.totalSize}`);
      const left = region.size - this.#pushOffset;
      if (left === 0) {
        this.#pushRegion++;
        this.#pushOffset = 0;
        continue;
      }
      // The rest of the current window: up to the next slice boundary or the region's end.
      const unit = Math.min((Math.floor(this.#pushOffset / slice) + 1) * slice, region.size) - this.#pushOffset;
      if (this.#pushPendingLength === 0) {
        // Whole windows straight from the chunk (the region's tail counts as one when all here).
        const avail = Math.min(length - at, left);
        const whole = avail === left ? avail : Math.floor((this.#pushOffset + avail) / slice) * slice - this.#pushOffset;
        if (whole > 0) {
          this.writePages(this.#pushRegion, this.#pushOffset, bytes().subarray(at, at + whole));
          this.#pushOffset += whole;
          at += whole;
          continue;
        }
        if (!this.#pushPending || this.#pushPending.length < unit) this.#pushPending = new Uint8Array(unit);
      }
      const pending = this.#pushPending!;
      const take = Math.min(unit - this.#pushPendingLength, length - at);
      pending.set(bytes().subarray(at, at + take), this.#pushPendingLength);
      this.#pushPendingLength += take;
      at += take;
      if (this.#pushPendingLength === unit) {
        this.writePages(this.#pushRegion, this.#pushOffset, pending.subarray(0, unit));
        this.#pushOffset += unit;
        this.#pushPendingLength = 0;
      }
    }
    if (final) {
      while (this.#pushRegion < this.header.regions.length && this.#pushOffset === this.header.regions[this.#pushRegion]!.size) {
        this.#pushRegion++;
        this.#pushOffset = 0;
      }
      if (this.#pushRegion < this.header.regions.length) {
        const pushed = this.header.regions.slice(0, this.#pushRegion).reduce((n, r) => n + r.size, 0) + this.#pushOffset + this.#pushPendingLength;
        throw new MigrationError("EINVAL", `state ended after ${pushed} of ${this.header.totalSize} bytes`);
      }
      this.end();
    }
  }

  /** Sends the device config blob (at most once per stream, at most one record's payload). */
  writeConfig(blob: Uint8Array): void {
    this.#checkOpen();
    if (this.#configSent) throw new MigrationError("EINVAL", "the config blob was already sent");
    if (blob.length > this.header.maxRecordPayload) {
      throw new MigrationError("EINVAL", `config blob of ${blob.length} bytes exceeds the record payload limit ${this.header.maxRecordPayload}`);
    }
    this.#flushPush();
    // Framing may drain to the sink first, which may grow core memory and detach a blob that
    // lives there: keep a copy (config blobs are small).
    const bytes = this.#core.owns(blob) ? blob.slice() : blob;
    this.#frame(TAG_CONFIG, bytes.length, (u8, at) => u8.set(bytes, at));
    this.#configSent = true;
  }

  /** Marks the end of a pre-copy round. */
  endRound(dirtyBytes = 0): RoundStats {
    this.#checkOpen();
    this.#flushPush();
    const round = this.#rounds;
    const pages = this.#pagesSent() - this.#roundPagesStart;
    const startBytes = this.#roundBytesStart;
    this.#frame(TAG_ROUND, ROUND_PAYLOAD, (u8, at) => {
      const view = new DataView(u8.buffer, at, ROUND_PAYLOAD);
      view.setUint32(0, round, true);
      view.setUint32(4, 0, true);
      view.setBigUint64(8, BigInt(pages), true);
      view.setBigUint64(16, BigInt(this.#position() + RECORD_OVERHEAD + ROUND_PAYLOAD - startBytes), true);
      view.setBigUint64(24, BigInt(dirtyBytes), true);
    });
    this.#rounds++;
    this.#roundPagesStart = this.#pagesSent();
    const bytes = this.#position() - startBytes;
    this.#roundBytesStart = this.#position();
    // A round boundary is where a live reader expects the data so far: hand it over now.
    this.#drain(false);
    return { round, pages, bytes, dirtyBytes };
  }

  /**
   * Hands every finished record to the sink now (normally output is drained per 1 MiB). The
   * record still open at the end stays: it may grow with the next pages.
   */
  flush(): void {
    this.#checkOpen();
    this.#drain(false);
  }

  /**
   * Stream bytes encoded but not handed to the sink yet: a header not sent, finished records not
   * drained, and the record still open (with its checksum to come). A reader that asks how much
   * is left (PRE_COPY info) must count these; 0 after end() or abort().
   */
  get heldBytes(): number {
    if (this.#ended) return 0;
    const ctx = this.#ctx;
    const open = ctx.u8(Enc.REC_TAG) !== 0 ? RECORD_OVERHEAD + ctx.u32(Enc.REC_PAYLOAD) : 0;
    return (this.#headerPending?.length ?? 0) + ctx.u32(Enc.OUTLEN) + open;
  }

  /** Writes the end-of-stream record and releases the encoder's core memory. */
  end(): void {
    this.#checkOpen();
    this.#flushPush();
    if (this.#pushPendingLength > 0) throw new MigrationError("EINVAL", "a pushed page is incomplete");
    this.#closeOpenRecord();
    const records = this.#ctx.u32(Enc.SEQ);
    const position = this.#position();
    const digest = this.#ctx.u64(Enc.DIGEST);
    this.#frame(TAG_END, END_PAYLOAD, (u8, at) => {
      const view = new DataView(u8.buffer, at, END_PAYLOAD);
      view.setBigUint64(0, BigInt(records), true);
      view.setBigUint64(8, BigInt(position), true);
      view.setBigUint64(16, digest, true);
    });
    this.#ended = true;
    this.#drain(true);
    this.#release();
  }

  /** Counts so far (records, bytes, pages by kind, rounds). */
  summary(): EncoderSummary {
    const ctx = this.#ctx;
    return {
      records: this.#ended ? this.#recordsAtEnd : ctx.u32(Enc.SEQ),
      bytes: this.#ended ? this.#bytes : this.#position(),
      pages: {
        raw: this.#counter(Enc.PAGES_RAW) - this.#counter(Enc.PAGES_LZ4),
        lz4: this.#counter(Enc.PAGES_LZ4),
        zero: this.#counter(Enc.PAGES_ZERO),
        delta: this.#counter(Enc.PAGES_DELTA),
        clean: this.#counter(Enc.PAGES_CLEAN),
      },
      compressed: {
        records: this.#counter(Enc.RECORDS_LZ4),
        bytes: this.#final ? this.#final[Enc.LZ4_PACKED]! : Number(ctx.u64(Enc.LZ4_PACKED)),
        stateBytes: this.#final ? this.#final[Enc.LZ4_COVERED]! : Number(ctx.u64(Enc.LZ4_COVERED)),
      },
      rounds: this.#rounds,
      config: this.#configSent,
      stateBytes: this.header.totalSize,
      checksum: this.header.checksum,
    };
  }

  /**
   * Sequence number the next record gets. With {@link spliceRecords}: where records encoded
   * elsewhere must start.
   */
  get nextRecordIndex(): number {
    return this.#ctx.u32(Enc.SEQ);
  }

  /**
   * Hands over whole records encoded elsewhere (the worker pool, src/codec/parallel-encode.ts)
   * as if this encoder had written them: they must be numbered from {@link nextRecordIndex},
   * `count` of them; `chain` advances the stream digest over them; `counts` holds the page and
   * LZ4 counters of the encoder context that encoded them. Output pending here goes first.
   * `lend`, given, receives `records` instead of the encoder's output (the caller keeps them
   * valid for as long as it promised whoever takes them; the encoder does not copy them).
   */
  spliceRecords(
    records: Uint8Array,
    count: number,
    chain: (digest: bigint) => bigint,
    counts: (field: number) => number | bigint,
    lend?: (records: Uint8Array) => void,
  ): void {
    this.#checkOpen();
    this.#flushPush();
    this.#closeOpenRecord();
    this.#drain(false);
    const ctx = this.#ctx;
    ctx.setU32(Enc.SEQ, ctx.u32(Enc.SEQ) + count);
    ctx.setU32(Enc.RECORDS, ctx.u32(Enc.RECORDS) + count);
    ctx.setU64(Enc.DIGEST, chain(ctx.u64(Enc.DIGEST)));
    for (const field of [Enc.PAGES_RAW, Enc.PAGES_ZERO, Enc.PAGES_DELTA, Enc.PAGES_CLEAN, Enc.PAGES_LZ4, Enc.RECORDS_LZ4]) {
      ctx.setU32(field, ctx.u32(field) + Number(counts(field)));
    }
    for (const field of [Enc.LZ4_PACKED, Enc.LZ4_COVERED]) ctx.setU64(field, ctx.u64(field) + BigInt(counts(field)));
    if (records.length === 0) return;
    this.#bytes += records.length;
    if (lend) lend(records);
    else this.#sink(records, false);
  }

  /** Gives back core memory without finishing the stream (after an error, or to abandon it). */
  abort(): void {
    this.#ended = true;
    this.#release();
  }

  #recordsAtEnd = 0;
  #final: Record<number, number> | undefined;

  #counter(field: number): number {
    return this.#final ? this.#final[field]! : this.#ctx.u32(field);
  }

  #pagesSent(): number {
    const ctx = this.#ctx;
    return ctx.u32(Enc.PAGES_RAW) + ctx.u32(Enc.PAGES_ZERO) + ctx.u32(Enc.PAGES_DELTA);
  }

  #position(): number {
    return this.#bytes + (this.#headerPending?.length ?? 0) + this.#ctx.u32(Enc.OUTLEN);
  }

  #resolveRegion(region: number | string): number {
    const index = typeof region === "number" ? region : this.#regionIndex.get(region);
    if (index === undefined || !Number.isInteger(index) || index < 0 || index >= this.header.regions.length) {
      throw new MigrationError("EINVAL", `no region ${JSON.stringify(region)} in this stream`);
    }
    return index;
  }

  #checkOpen(): void {
    if (this.#ended) throw new MigrationError("EINVAL", "the encoder has ended");
  }

  /** Bytes of a region staged per kernel call when its data is not in core memory. */
  #stageSlice(): number {
    // Whole bytes of the dirty bitmap (8 pages), so a staged bitmap slice starts at bit 0.
    const pageSize = this.header.pageSize;
    return Math.max(1, Math.floor(STAGE_WINDOW / (pageSize * 8))) * pageSize * 8;
  }

  /**
   * Encodes the whole pages that push() holds back, before a record that must follow them (a
   * config blob, a round marker, the end). A partial page stays pending.
   */
  #flushPush(): void {
    const pending = this.#pushPending;
    const whole = this.#pushPendingLength - (this.#pushPendingLength % this.header.pageSize);
    if (!pending || whole === 0) return;
    this.writePages(this.#pushRegion, this.#pushOffset, pending.subarray(0, whole));
    pending.copyWithin(0, whole, this.#pushPendingLength);
    this.#pushOffset += whole;
    this.#pushPendingLength -= whole;
  }

  #staging(size: number): number {
    if (this.#stageCap < size) {
      if (this.#stageCap > 0) this.#core.free(this.#stage);
      this.#stage = this.#core.alloc(size);
      this.#stageCap = size;
    }
    return this.#stage;
  }

  /** Frames a small record whose payload `fill` writes, making room in the output first. */
  #frame(tag: number, payload: number, fill: (u8: Uint8Array, at: number) => void): void {
    this.#flushHeader();
    this.#closeOpenRecord();
    const ctx = this.#ctx;
    if (ctx.u32(Enc.OUTLEN) + RECORD_OVERHEAD + payload > this.#outCap) this.#drain(false);
    guarded((c) => {
      fill(c.u8, this.#out + ctx.u32(Enc.OUTLEN) + RECORD_HEADER);
      c.exports.frame_record(ctx.ptr, tag, 0, payload);
    });
  }

  #flushHeader(): void {
    const header = this.#headerPending;
    if (!header) return;
    this.#headerPending = undefined;
    this.#bytes += header.length;
    this.#sink(header, false);
  }

  /** The kernel keeps the last record open for the next window; these records must follow it. */
  #closeOpenRecord(): void {
    this.#core.exports.encode_flush(this.#ctx.ptr);
  }

  /** Hands the finished records to the sink; an open record moves to the buffer's start. */
  #drain(final: boolean): void {
    this.#flushHeader();
    const ctx = this.#ctx;
    const length = ctx.u32(Enc.OUTLEN);
    if (length > 0 || final) {
      this.#bytes += length;
      ctx.setU32(Enc.OUTLEN, 0);
      this.#sink(this.#core.u8.subarray(this.#out, this.#out + length), final);
      if (ctx.u8(Enc.REC_TAG) !== 0) {
        const open = this.#out + length;
        this.#core.u8.copyWithin(this.#out, open, open + RECORD_HEADER + ctx.u32(Enc.REC_PAYLOAD));
      }
    }
  }

  #release(): void {
    if (this.#final) return;
    const ctx = this.#ctx;
    this.#recordsAtEnd = ctx.u32(Enc.SEQ);
    this.#final = {
      [Enc.PAGES_RAW]: ctx.u32(Enc.PAGES_RAW),
      [Enc.PAGES_ZERO]: ctx.u32(Enc.PAGES_ZERO),
      [Enc.PAGES_DELTA]: ctx.u32(Enc.PAGES_DELTA),
      [Enc.PAGES_CLEAN]: ctx.u32(Enc.PAGES_CLEAN),
      [Enc.PAGES_LZ4]: ctx.u32(Enc.PAGES_LZ4),
      [Enc.RECORDS_LZ4]: ctx.u32(Enc.RECORDS_LZ4),
      [Enc.LZ4_PACKED]: Number(ctx.u64(Enc.LZ4_PACKED)),
      [Enc.LZ4_COVERED]: Number(ctx.u64(Enc.LZ4_COVERED)),
    };
    const c = this.#core;
    c.free(this.#out);
    c.free(this.#scratch);
    if (this.#lz4Scratch !== 0) c.free(this.#lz4Scratch);
    c.free(ctx.ptr);
    if (this.#stageCap > 0) c.free(this.#stage);
    this.#stageCap = 0;
  }
}

/** A push-style encoder whose output goes to `options.ondata`. */
export function createEncoder(options: EncoderOptions): StreamEncoder {
  return new StreamEncoder(options);
}
