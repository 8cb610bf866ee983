// A pure-TS encoder of whole snapshots: the same stream, byte for byte, that the Wasm path
// writes for encodeSnapshot, built from the reference kernels. It is the differential-test
// oracle for the encode kernel and the baseline its speed is measured against.
import { MigrationError } from "../core/errors.js";
import { crc32cReference } from "../core/reference/crc32c.js";
import { lz4CompressReference } from "../core/reference/lz4.js";
import { xbzrleEncodeReference } from "../core/reference/xbzrle.js";
import { xxh3Reference } from "../core/reference/xxh3.js";
import {
  DEFAULT_MAX_RECORD_PAYLOAD,
  DEFAULT_PAGE_SIZE,
  END_PAYLOAD,
  RECORD_HEADER,
  RECORD_OVERHEAD,
  TAG_CONFIG,
  TAG_DELTA,
  TAG_END,
  TAG_LZ4,
  TAG_PAGES,
  TAG_ZERO,
} from "../format/constants.js";
import { encodeHeader } from "../format/header.js";
import type { SnapshotEncodeOptions } from "./snapshot.js";

const LZ4_BAIL_AFTER = 64 * 1024;

export function encodeSnapshotReference(state: Uint8Array, options: SnapshotEncodeOptions = {}): Uint8Array {
  const pageSize = options.pageSize ?? DEFAULT_PAGE_SIZE;
  const regions = options.regions ?? [{ name: "state", size: state.length }];
  const { base, config } = options;
  if (regions.reduce((n, r) => n + r.size, 0) !== state.length) throw new MigrationError("EINVAL", "regions do not add up to the state");
  if (base && base.length !== state.length) throw new MigrationError("EINVAL", "base and state differ in length");
  const { bytes: header, header: fields } = encodeHeader({
    checksum: options.checksum ?? "xxh3",
    pageSize,
    maxRecordPayload: options.maxRecordPayload ?? Math.max(DEFAULT_MAX_RECORD_PAYLOAD, pageSize),
    deviceId: options.deviceId ?? "",
    baseDigest: base ? xxh3Reference(base) : undefined,
    regions,
    compression: options.compress ?? "none",
  });
  const compress = fields.compression === "lz4";
  const maxPayload = fields.maxRecordPayload;
  const checksum = fields.checksum === "crc32c" ? (b: Uint8Array) => BigInt(crc32cReference(b)) : (b: Uint8Array) => xxh3Reference(b);
  const out: Uint8Array[] = [header];
  let position = header.length;
  let seq = 0;
  let digest = fields.checksumValue;

  const emit = (tag: number, region: number, offset: number, pages: number, payload: Uint8Array): void => {
    const record = new Uint8Array(RECORD_OVERHEAD + payload.length);
    const view = new DataView(record.buffer);
    view.setUint8(0, tag);
    view.setUint16(2, region, true);
    view.setUint32(4, payload.length, true);
    view.setUint32(8, seq, true);
    view.setUint32(12, pages, true);
    view.setBigUint64(16, BigInt(offset), true);
    record.set(payload, RECORD_HEADER);
    const sum = checksum(record.subarray(0, RECORD_HEADER + payload.length));
    view.setBigUint64(RECORD_HEADER + payload.length, sum, true);
    const chain = new DataView(new ArrayBuffer(16));
    chain.setBigUint64(0, digest, true);
    chain.setBigUint64(8, sum, true);
    digest = xxh3Reference(new Uint8Array(chain.buffer));
    out.push(record);
    position += record.length;
    seq++;
  };

  let regionStart = 0;
  regions.forEach((region, index) => {
    const data = state.subarray(regionStart, regionStart + region.size);
    const old = base?.subarray(regionStart, regionStart + region.size);
    // The run being built: kind, first page, payload parts.
    let tag = 0;
    let first = 0;
    let count = 0;
    let parts: Uint8Array[] = [];
    let length = 0;
    const flush = (): void => {
      if (tag === 0) return;
      const payload = new Uint8Array(length);
      let at = 0;
      for (const part of parts) {
        payload.set(part, at);
        at += part.length;
      }
      // With compression, a raw run goes out as LZ4 when that is smaller (the kernel's rule:
      // try once the record is complete, give up after 64 KiB that do not shrink by 1/32).
      const packed = compress && tag === TAG_PAGES && length > 5 ? lz4CompressReference(payload, LZ4_BAIL_AFTER) : null;
      if (packed && packed.length <= length - 5) {
        const record = new Uint8Array(4 + packed.length);
        new DataView(record.buffer).setUint32(0, length, true);
        record.set(packed, 4);
        emit(TAG_LZ4, index, first * pageSize, count, record);
      } else {
        emit(tag, index, first * pageSize, count, payload);
      }
      tag = 0;
    };
    for (let page = 0; page * pageSize < region.size; page++) {
      const bytes = data.subarray(page * pageSize, Math.min(region.size, (page + 1) * pageSize));
      const previous = old?.subarray(page * pageSize, page * pageSize + bytes.length);
      if (previous && equal(bytes, previous)) continue;
      let kind = TAG_PAGES;
      let part = bytes;
      if (bytes.every((b) => b === 0)) {
        kind = TAG_ZERO;
        part = new Uint8Array(0);
      } else if (previous && bytes.length > 5) {
        const delta = xbzrleEncodeReference(previous, bytes, bytes.length - 5);
        if (delta) {
          kind = TAG_DELTA;
          part = new Uint8Array(4 + delta.length);
          new DataView(part.buffer).setUint32(0, delta.length, true);
          part.set(delta, 4);
        }
      }
      if (!(tag === kind && first + count === page && length + part.length <= maxPayload)) {
        flush();
        tag = kind;
        first = page;
        count = 0;
        parts = [];
        length = 0;
      }
      parts.push(part);
      length += part.length;
      count++;
    }
    flush();
    regionStart += region.size;
  });
  if (config) emit(TAG_CONFIG, 0, 0, 0, config);
  const end = new Uint8Array(END_PAYLOAD);
  const endView = new DataView(end.buffer);
  endView.setBigUint64(0, BigInt(seq), true);
  endView.setBigUint64(8, BigInt(position), true);
  endView.setBigUint64(16, digest, true);
  emit(TAG_END, 0, 0, 0, end);

  const stream = new Uint8Array(position);
  let at = 0;
  for (const part of out) {
    stream.set(part, at);
    at += part.length;
  }
  return stream;
}

function equal(a: Uint8Array, b: Uint8Array): boolean {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
