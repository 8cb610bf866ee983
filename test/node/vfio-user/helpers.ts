// Serving a device for the vfio-user tests: a socket in a fresh folder, closed after the test.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { MigrationDevice } from "../../../src/migration/v2/migration-device.js";
import { serveVfioUser, type VfioUserServer, type VfioUserServerOptions } from "../../../src/node/vfio-user/server.js";

export interface Served {
  server: VfioUserServer;
  path: string;
  dir: string;
  close(): Promise<void>;
}

export async function serve(device: MigrationDevice, options: Partial<VfioUserServerOptions> = {}): Promise<Served> {
  const dir = mkdtempSync(join(tmpdir(), "vfu-"));
  const path = join(dir, "dev.sock");
  const server = await serveVfioUser(device, { path, ...options }).catch((error: unknown) => {
    rmSync(dir, { recursive: true, force: true });
    throw error;
  });
  return {
    server,
    path,
    dir,
    close: async () => {
      await server.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Resolves when `condition` holds, polling; rejects after `ms`. */
export async function until(condition: () => boolean, ms = 10_000): Promise<void> {
  const start = Date.now();
  while (!condition()) {
    if (Date.now() - start > ms) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 5));
  }
}
