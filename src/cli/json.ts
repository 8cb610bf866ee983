// The pieces of the --json schema that several commands share (docs/json-schema.md): the same
// names and shapes for the same things everywhere.
import { readFileSync } from "node:fs";
import type { DecoderSummary } from "../codec/decoder.js";
import type { StreamHeader } from "../format/header.js";

/** Records by kind, with their total: the one shape of `records`. */
export function recordsJson(r: DecoderSummary["records"]): Record<string, number> {
  return { total: r.pages + r.lz4 + r.zero + r.delta + r.config + r.round + r.skipped + r.end, ...r };
}

export function headerJson(h: StreamHeader): Record<string, unknown> {
  return {
    version: `${h.major}.${h.minor}`,
    checksum: h.checksum,
    compression: h.compression,
    pageSize: h.pageSize,
    totalSize: h.totalSize,
    maxRecordPayload: h.maxRecordPayload,
    deviceId: h.deviceId,
    incremental: h.baseDigest !== undefined,
    ...(h.baseDigest !== undefined ? { baseDigest: h.baseDigest } : {}),
    regions: h.regions,
  };
}

export const round3 = (n: number): number => Math.round(n * 1000) / 1000;

/** Time, throughput over the state, and this process's peak RSS. */
export function resources(started: number, stateBytes: number): { durationMs: number; throughput: number; maxRssBytes: number } {
  const durationMs = performance.now() - started;
  return {
    durationMs: round3(durationMs),
    throughput: Math.round(stateBytes / Math.max(durationMs / 1000, 1e-6)),
    maxRssBytes: peakRss(),
  };
}

/**
 * This process's peak resident set. On Linux getrusage's maxrss carries the parent's peak over
 * fork and exec (a CLI spawned by a large process would report the parent's), so the kernel's
 * per-process high-water mark (VmHWM) is read instead where it exists.
 */
export function peakRss(): number {
  try {
    const match = /^VmHWM:\s+(\d+) kB$/m.exec(readFileSync("/proc/self/status", "utf8"));
    if (match) return Number(match[1]) * 1024;
  } catch {
    // not Linux: fall through
  }
  return process.resourceUsage().maxRSS * 1024;
}
