// `migstream vfio-user` as users run it: the real CLI serving the synthetic device on a UNIX
// socket, driven by the spec-based test client; the socket is 0600 and gone after SIGTERM /
// SIGINT; an existing path and a bad size are refused.
import { existsSync, statSync, writeFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { STATE, TestClient } from "../node/vfio-user/client.js";
import { finished, run, start, useTestDir, waitForStderr } from "./helpers.js";

const scratch = useTestDir();

describe("migstream vfio-user", () => {
  it("serves the synthetic device until SIGTERM; a client migrates it out; the socket goes on exit", async () => {
    const path = scratch.at("dev0.sock");
    const child = start(["vfio-user", "--socket", path, "--size", "1M", "--device-id", "e2e-dev"]);
    const done = finished(child);
    await waitForStderr(child, /listening on /);
    expect(statSync(path).mode & 0o777).toBe(0o600);
    const client = await TestClient.connect(path);
    await client.version();
    const info = await client.deviceInfo();
    expect(info.regions).toBe(9);
    // 1 MiB: a 64 KiB register BAR and the rest as memory, in a 1 MiB BAR.
    expect((await client.regionInfo(0)).size).toBe(65536);
    expect((await client.regionInfo(1)).size).toBe(1 << 20);
    await client.regionWrite(1, 4096, Buffer.from("from the e2e test"));
    expect((await client.regionRead(1, 4096, 17)).toString()).toBe("from the e2e test");
    await client.setState(STATE.STOP_COPY);
    let bytes = 0;
    for (;;) {
      const chunk = await client.migRead(1 << 20);
      bytes += chunk.length;
      if (chunk.length < 1 << 20) break;
    }
    expect(bytes).toBeGreaterThan(64 * 1024);
    await client.setState(STATE.RUNNING);
    await client.close();
    child.kill("SIGTERM");
    const result = await done;
    expect(result.code).toBe(143);
    expect(existsSync(path)).toBe(false);
  });

  it("SIGINT ends it too (exit 130), socket removed", async () => {
    const path = scratch.at("dev1.sock");
    const child = start(["vfio-user", "--socket", path, "--size", "64K"]);
    const done = finished(child);
    const match = await waitForStderr(child, /listening on (.+)\n/);
    expect(match[1]).toBe(path);
    child.kill("SIGINT");
    expect((await done).code).toBe(130);
    expect(existsSync(path)).toBe(false);
  });

  it("refuses an existing path (the file is left alone) and an invalid size", async () => {
    const path = scratch.at("taken");
    writeFileSync(path, "not a socket");
    const taken = await run(["vfio-user", "--socket", path]);
    expect(taken.code).toBe(1);
    expect(taken.stderr).toMatch(/already exists/);
    expect(existsSync(path)).toBe(true);
    const size = await run(["vfio-user", "--socket", scratch.at("x.sock"), "--size", "lots"]);
    expect(size.code).toBe(1);
    const missing = await run(["vfio-user"]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/--socket/);
    const help = await run(["vfio-user", "--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout.toString()).toMatch(/Examples:\n {2}migstream vfio-user --socket/);
  });
});
