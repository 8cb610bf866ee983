#!/usr/bin/env node
// The migstream command line. Data goes to stdout only; messages and progress to stderr.
// Exit codes: 0 success, 1 usage, 2 corrupt or incomplete stream, 3 incompatible stream or
// device, 4 I/O error; 128 + the signal's number when a signal ended it (SIGHUP 129, SIGINT 130,
// SIGPIPE 141, SIGTERM 143). Whatever ends a command, no temporary file survives it.
import { readFileSync } from "node:fs";
import { Command, CommanderError } from "commander";
import { abortPendingFiles } from "../node/atomic-file.js";
import { registerCodecCommands } from "./commands/codec.js";
import { registerLiveCommands } from "./commands/live.js";
import { registerVfioUserCommand } from "./commands/vfio-user.js";
import { registerQemuCommands } from "./commands/qemu.js";
import { CliError, context, EXIT, exitCodeFor, reportFailure, SIGNAL_EXIT } from "./common.js";

const { version } = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { version: string };

// SIGPIPE is left as Node sets it (ignored): a listener would turn every write to a socket the
// peer closed (send, receive) into a death by signal instead of an EPIPE error the transport
// reports. A closed stdout is seen as EPIPE below and ends the command as SIGPIPE would.
for (const signal of ["SIGHUP", "SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => {
    // No partial output, spool or staging survives; existing outputs were never touched.
    abortPendingFiles();
    // After SIGHUP or SIGPIPE there may be nobody to read stderr: say nothing then.
    if (signal === "SIGINT" || signal === "SIGTERM") process.stderr.write(`\nmigstream: interrupted (${signal})\n`);
    process.exit(SIGNAL_EXIT[signal]);
  });
}
// A reader that closed stdout (`| head`) ends the command quietly, as SIGPIPE would have; the
// command's own writes report other stdout errors (ENOSPC on /dev/full, say) as EIO.
process.stdout.on("error", (error: NodeJS.ErrnoException) => {
  if (error.code === "EPIPE") {
    abortPendingFiles();
    process.exit(SIGNAL_EXIT.SIGPIPE);
  }
});
// Whatever path the process takes out, temporary files go with it.
process.on("exit", () => abortPendingFiles());

const program = new Command("migstream")
  .description("Encode, decode, inspect, verify and ship live-migration streams of device state")
  .version(version)
  .configureOutput({ outputError: () => undefined });

registerCodecCommands(program);
registerLiveCommands(program);
registerVfioUserCommand(program);
registerQemuCommands(program);

// Usage errors: one line and where to read more (not the whole help).
program.exitOverride();
for (const command of program.commands) {
  command.exitOverride((error) => {
    throw error.exitCode === 0 ? error : new CliError("EINVAL", error.message.replace(/^error: /, ""), { hint: `see migstream ${command.name()} --help` });
  });
  command.hook("preAction", (_program, action) => {
    const flags = action.opts<{ json?: boolean; output?: string; verbose?: boolean }>();
    context.command = action.name();
    context.verbose = flags.verbose === true;
    context.json = flags.json === true;
    context.dataOnStdout = flags.output === "-";
  });
}

try {
  await program.parseAsync(process.argv);
} catch (error) {
  if (error instanceof CommanderError) {
    if (error.exitCode === 0) process.exitCode = EXIT.ok;
    else {
      process.stderr.write(`migstream: EINVAL: ${error.message.replace(/^error: /, "")}\nsee migstream --help\n`);
      process.exitCode = EXIT.usage;
    }
  } else {
    abortPendingFiles();
    if (error instanceof CliError && error.code === "EINVAL" && error.hint?.startsWith("see ")) {
      // A usage error: its usage line, in JSON too when --json was asked for.
      context.command ||= /see migstream (\S+)/.exec(error.hint)?.[1] ?? "";
      context.json ||= process.argv.includes("--json");
    }
    reportFailure(error);
    process.exitCode = exitCodeFor(error);
  }
}
