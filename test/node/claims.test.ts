// Memory follows what arrived, for every peer and every decoder: processes facing 1 GiB claims
// that never send a page (bench/claims-rss.mjs, in a child process so its peak RSS is its own).
// The second claim costs what the first did, ten at once cost no more than one, and none is
// refused for memory that only a claim reserved.
import { execFileSync } from "node:child_process";
import { beforeAll, describe, expect, it } from "vitest";
import { ensureBuilt, ROOT } from "../cli/helpers.js";

beforeAll(ensureBuilt, 300_000);

interface Claims {
  hwmBeforeMiB: number;
  hwmAfterMiB: number;
  coreBefore: number;
  coreAfter: number;
  codes: Record<string, number>;
}

function claims(...args: string[]): Claims {
  const out = execFileSync(process.execPath, ["--expose-gc", "bench/claims-rss.mjs", ...args], { cwd: ROOT, encoding: "utf8", timeout: 120_000 });
  const result = JSON.parse(out.trim().split("\n").pop()!) as Claims;
  console.info(`claims ${args.join(" ")}: VmHWM ${result.hwmBeforeMiB} -> ${result.hwmAfterMiB} MiB, ${JSON.stringify(result.codes)}`);
  return result;
}

describe("1 GiB header-only claims", () => {
  it.each([
    ["device", "successive", "2", "ENODATA"],
    ["device", "successive", "10", "ENODATA"],
    ["device", "concurrent", "10", "ENODATA"],
    ["decoder", "concurrent", "10", "ok"],
  ])(
    "receiveDevice/createDecoder %s %s ×%s: peak RSS grows by less than 64 MiB, every claim ends %s, core memory all back",
    { timeout: 150_000 },
    (api, mode, count, code) => {
      const result = claims(api, mode, count);
      expect(result.codes).toEqual({ [code]: Number(count) });
      expect(result.hwmAfterMiB - result.hwmBeforeMiB).toBeLessThan(64);
      expect(result.coreAfter).toBe(result.coreBefore);
    },
  );
});
