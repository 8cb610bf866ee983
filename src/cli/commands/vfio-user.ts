// vfio-user: the synthetic demo device served as a PCI function on a UNIX socket, for a
// vfio-user client (a VMM, or a test) to drive and migrate, until SIGINT or SIGTERM.
import { lstatSync, unlinkSync } from "node:fs";
import type { Command } from "commander";
import { serveVfioUser } from "../../node/vfio-user/server.js";
import { CliError, formatBytes, parseSize } from "../common.js";
import { createSyntheticDevice } from "../synthetic-device.js";

interface VfioUserFlags {
  socket: string;
  size: string;
  deviceId: string;
  seed: string;
}

async function runVfioUser(flags: VfioUserFlags): Promise<void> {
  const size = parseSize(flags.size);
  const seed = Number(flags.seed);
  if (!Number.isSafeInteger(seed)) throw new CliError("EINVAL", `invalid seed ${JSON.stringify(flags.seed)}`, { hint: "see migstream vfio-user --help" });
  const device = createSyntheticDevice({ size, pageSize: 4096, tracking: "explicit", seed, deviceId: flags.deviceId });
  const server = await serveVfioUser(device, { path: flags.socket });
  // main.ts ends the process on SIGINT / SIGTERM (exit 130 / 143): the socket file goes with it,
  // unless something else has taken the path since.
  const inode = lstatSync(server.path).ino;
  process.on("exit", () => {
    try {
      if (lstatSync(server.path).ino === inode) unlinkSync(server.path);
    } catch {
      // already gone
    }
  });
  const regions = device.model.regions.map((r, i) => `BAR${i} ${r.name} ${formatBytes(r.size)}`).join(", ");
  process.stderr.write(`migstream: serving the synthetic device (${regions}; device id ${JSON.stringify(flags.deviceId)})\nlistening on ${server.path}\n`);
  await new Promise<never>(() => undefined);
}

export function registerVfioUserCommand(program: Command): void {
  program
    .command("vfio-user")
    .description("serve the synthetic demo device to a vfio-user client on a UNIX socket (0600) until SIGINT or SIGTERM")
    .requiredOption("--socket <path>", "UNIX socket path to create (must not exist)")
    .option("--size <bytes>", "size of the synthetic device (a register BAR and a memory BAR)", "16M")
    .option("--device-id <id>", "compatibility id migration streams must carry", "migstream-demo")
    .option("--seed <n>", "seed of the synthetic content", "1")
    .addHelpText(
      "after",
      "\nExamples:\n  migstream vfio-user --socket /run/migstream/dev0.sock\n  migstream vfio-user --socket ./dev.sock --size 256M --device-id my-model",
    )
    .action(runVfioUser);
}
