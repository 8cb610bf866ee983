// Stream-byte estimates for compressed streams. PRE_COPY info and MIG_DATA_SIZE are in stream
// bytes: with `compress: "lz4"` a page costs what LZ4 makes of it, not a page. Until a session
// has sent enough pages to measure that, a sample of the device's own content is compressed.
import { lz4CompressBlock } from "../core/lz4.js";
import { core, guarded } from "../core/instance.js";
import type { DeviceModel } from "../device/device-model.js";
import type { EncoderSummary } from "../codec/encoder.js";
import { RECORD_OVERHEAD } from "../format/constants.js";

/** State bytes compressed for a sample: 16 windows of 64 KiB at most (a few ms in the core). */
const SAMPLE_BUDGET = 1 << 20;
const SAMPLE_WINDOW = 64 * 1024;
/** Page bytes a session must have sent before its own ratio replaces the sample's. */
const MEASURED_MIN = 1 << 20;

/**
 * Stream bytes per byte of non-zero page content when the pages go out LZ4-compressed, from
 * windows spread evenly over the state (zero pages are left out: they travel as small records
 * and the estimates count them apart). 1 when nothing compresses or nothing is there.
 */
export function sampleLz4Ratio(device: DeviceModel): number {
  const pageSize = device.pageSize;
  const window = Math.max(pageSize, Math.floor(SAMPLE_WINDOW / pageSize) * pageSize);
  const total = device.size;
  if (total === 0) return 1;
  const samples = Math.max(1, Math.min(Math.floor(SAMPLE_BUDGET / window), Math.ceil(total / window)));
  const step = total / samples;
  let packed = 0;
  let content = 0;
  for (let k = 0; k < samples; k++) {
    // The k-th sample position in the regions laid end to end, aligned down to a page.
    let at = Math.floor(k * step);
    let index = 0;
    while (index < device.regions.length && at >= device.regions[index]!.size) at -= device.regions[index++]!.size;
    const region = device.regions[index];
    if (!region) break;
    const offset = Math.floor(at / pageSize) * pageSize;
    const length = Math.min(window, region.size - offset);
    if (length <= 0) continue;
    let zeroPages = 0;
    guarded(() =>
      region.inCore(pageSize, (ptr, _at, n) => (zeroPages += core().exports.scan_zero(ptr, n, pageSize, region.scratch.ptr) >>> 0), offset, offset + length),
    );
    const nonZero = Math.max(0, length - zeroPages * pageSize);
    if (nonZero === 0) continue;
    const block = lz4CompressBlock(region.bytes.subarray(offset, offset + length));
    // The encoder sends a run raw when LZ4 does not make it smaller.
    packed += Math.min(nonZero, block.length + RECORD_OVERHEAD);
    content += nonZero;
  }
  return content === 0 ? 1 : Math.min(1, packed / content);
}

/**
 * The ratio a session measured on the pages it sent (LZ4 payload plus pages sent raw, over the
 * page bytes), once it has sent enough of them; else undefined.
 */
export function measuredLz4Ratio(summary: EncoderSummary, pageSize: number): number | undefined {
  const pages = summary.pages.raw + summary.pages.lz4;
  const bytes = pages * pageSize;
  if (bytes < MEASURED_MIN) return undefined;
  return Math.min(1, (summary.compressed.bytes + summary.compressed.records * RECORD_OVERHEAD + summary.pages.raw * pageSize) / bytes);
}
