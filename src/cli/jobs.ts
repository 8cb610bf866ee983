// --jobs: how many threads the codec commands run on (the worker pool, the calling thread
// included), its default, and what --json reports.
import type { Command } from "commander";
import { MigrationError } from "../core/errors.js";
import { DEFAULT_JOBS_CAP, defaultJobs, MAX_JOBS } from "../core/pool/pool.js";

export interface JobsFlags {
  jobs?: string;
  quiet?: boolean;
}

/**
 * `--jobs <n>`: threads for the codec (the worker pool, the calling thread included). Without
 * it, {@link parseJobs} picks: the cores (up to DEFAULT_JOBS_CAP) for inputs of AUTO_JOBS_FROM
 * or more where the pool measured no slower on a 2-core machine (decode, verify, apply, and
 * encode with LZ4), one thread otherwise (small inputs, where starting workers costs more than it
 * saves, and encoding without compression, which the pool made slower: its work is reading and
 * writing, not computing). `automatic` false (send): one thread unless asked, since a sender's
 * extra threads were measured only against a receiver on the same cores (0.83-0.97x), which says
 * nothing of two hosts. docs/ARCHITECTURE.md, "The worker pool", has the numbers.
 */
export function jobsOption(command: Command, automatic = true): Command {
  const byDefault = automatic
    ? `the cores, up to ${DEFAULT_JOBS_CAP}, for inputs of ${AUTO_JOBS_FROM / 2 ** 20} MiB or more, but 1 for encode without --compress; ${defaultJobs()} here`
    : "1";
  return command.option("-j, --jobs <n>", `threads to encode, decode and check with, 1-${MAX_JOBS} (default: ${byDefault}; output identical to one thread's)`);
}

/** Inputs from this size up get more than one thread by default. */
const AUTO_JOBS_FROM = 64 * 2 ** 20;

/**
 * The threads to use: `--jobs` when given; otherwise the cores for an input of `inputBytes` or
 * more (undefined: unknown, stdin say: one thread) where `parallelPays`, else 1.
 */
export function parseJobs(flags: JobsFlags, inputBytes: number | undefined, parallelPays = true): number {
  if (flags.jobs === undefined) return parallelPays && inputBytes !== undefined && inputBytes >= AUTO_JOBS_FROM ? defaultJobs() : 1;
  const text = flags.jobs;
  const jobs = /^\d+$/.test(text) ? Number(text) : Number.NaN;
  if (!Number.isInteger(jobs) || jobs < 1 || jobs > MAX_JOBS)
    throw new MigrationError("EINVAL", `--jobs must be an integer from 1 to ${MAX_JOBS}, got ${JSON.stringify(text)}`);
  return jobs;
}

/**
 * The threads a command's codec runs on: `asked`, or 1 once the pool could not start (its note,
 * printed, says why). `used()` is what --json reports as `jobs`.
 */
export function threadsFor(flags: JobsFlags, asked: number): { jobs: number; onnote: (message: string) => void; used: () => number } {
  let used = asked;
  const note = noteFor(flags);
  return {
    jobs: asked,
    onnote: (message) => {
      used = 1;
      note(message);
    },
    used: () => used,
  };
}

/** Says why the work runs on one thread when more were asked (stderr, not with --quiet). */
export function noteFor(flags: JobsFlags): (message: string) => void {
  return (message) => {
    if (!flags.quiet) process.stderr.write(`note: ${message}\n`);
  };
}
