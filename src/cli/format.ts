// Numbers for people: sizes in binary units, and sizes given on the command line.
import { MigrationError } from "../core/errors.js";

export function formatBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

/** Parses a size like 4096, 4k, 64KiB, 1M, 256MiB, 1g. */
export function parseSize(text: string): number {
  const match = /^(\d+)\s*([kmgt]?)(i?b)?$/i.exec(text.trim());
  if (!match) throw new MigrationError("EINVAL", `invalid size ${JSON.stringify(text)}`);
  const scale = { "": 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 }[match[2]!.toLowerCase()] ?? 1;
  return Number(match[1]) * scale;
}

/** The smallest size flag value (in whole KiB, MiB or GiB) that is at least `bytes`. */
export function sizeFlag(bytes: number): string {
  for (const [unit, scale] of [
    ["G", 1024 ** 3],
    ["M", 1024 ** 2],
    ["K", 1024],
  ] as const) {
    if (bytes >= scale) return `${Math.ceil(bytes / scale)}${unit}`;
  }
  return String(bytes);
}
