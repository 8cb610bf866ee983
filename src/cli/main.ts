#!/usr/bin/env node
// The migstream command line. Data goes to stdout only; messages and progress to stderr.
// Exit codes: 0 success, 1 usage, 2 corrupt or incomplete stream, 3 incompatible stream or
// device, 4 I/O error (130 when interrupted).
import { readFileSync } from "node:fs";
import { Command, CommanderError } from "commander";
import { abortPendingFiles } from "../node/atomic-file.js";
import { registerCodecCommands } from "./commands/codec.js";
import { registerLiveCommands } from "./commands/live.js";
import { describeError, EXIT, exitCodeFor } from "./common.js";

const { version } = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { version: string };

for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => {
    // No partial output survives an interruption; existing outputs were never touched.
    abortPendingFiles();
    process.stderr.write(`\nmigstream: interrupted (${signal})\n`);
    process.exit(EXIT.interrupted);
  });
}
// A closed pipe downstream (e.g. `| head`) is not an error worth a stack trace.
process.stdout.on("error", (error: NodeJS.ErrnoException) => {
  if (error.code === "EPIPE") process.exit(EXIT.io);
  throw error;
});

const program = new Command("migstream")
  .description("Encode, decode, inspect, verify and ship live-migration streams of device state")
  .version(version)
  .showHelpAfterError()
  .exitOverride();

registerCodecCommands(program);
registerLiveCommands(program);

try {
  await program.parseAsync(process.argv);
} catch (error) {
  if (error instanceof CommanderError) {
    process.exitCode = error.exitCode === 0 ? EXIT.ok : EXIT.usage;
  } else {
    abortPendingFiles();
    process.stderr.write(`${describeError(error)}\n`);
    process.exitCode = exitCodeFor(error);
  }
}
