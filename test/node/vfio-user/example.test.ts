// The worked example in examples/vfio-user-device runs as written (against the built package):
// two device processes, a spec-written client, a migration whose BARs compare identical.
import { execFileSync } from "node:child_process";
import { beforeAll, describe, expect, it } from "vitest";
import { ensureBuilt, ROOT } from "../../cli/helpers.js";

describe("examples/vfio-user-device", () => {
  beforeAll(async () => {
    await ensureBuilt();
  });

  it("migrate.mjs: doorbells DMA into guest memory, the device migrates, BARs identical", () => {
    const out = execFileSync(process.execPath, ["examples/vfio-user-device/migrate.mjs"], { cwd: ROOT, encoding: "utf8", timeout: 60_000 });
    expect(out).toMatch(/doorbells: 3 completions, record 2 in guest memory: 020000000d600000/);
    expect(out).toMatch(/BARs identical/);
  });
});
