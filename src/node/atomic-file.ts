// Output files that appear only when complete: data goes to a temporary name beside the target
// and is renamed over it only after everything verified. On failure or interruption the
// temporary file is removed and an existing target is left as it was.
import { closeSync, copyFileSync, fsyncSync, openSync, renameSync, unlinkSync, writeSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { basename, dirname, join } from "node:path";
import { MigrationError } from "../core/errors.js";

const pending = new Set<AtomicFile>();

/**
 * Fault injection for tests of the storage failure paths: with MIGSTREAM_FAULT_ENOSPC_AT=<n> in
 * the environment, writes reaching past byte n of a temporary output fail as a full disk would.
 */
const faultAt = ((): number | undefined => {
  const text = typeof process === "object" ? process.env["MIGSTREAM_FAULT_ENOSPC_AT"] : undefined;
  const n = text === undefined ? NaN : Number(text);
  return Number.isSafeInteger(n) && n >= 0 ? n : undefined;
})();
const cleanups = new Set<() => void>();

/**
 * Registers temporary state (a spool directory, say) to remove on interruption as well as on
 * the normal path; returns the function that removes it and unregisters it.
 */
export function onInterruptCleanup(cleanup: () => void): () => void {
  const once = (): void => {
    if (!cleanups.delete(once)) return;
    cleanup();
  };
  cleanups.add(once);
  return once;
}

export class AtomicFile {
  readonly path: string;
  readonly tempPath: string;
  readonly fd: number;
  #open = true;

  /** Creates the temporary file; `initial` (a path) is copied into it first (a base to patch). */
  constructor(path: string, initial?: string) {
    this.path = path;
    this.tempPath = join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(4).toString("hex")}.migstream-tmp`);
    try {
      if (initial !== undefined) copyFileSync(initial, this.tempPath);
      this.fd = openSync(this.tempPath, initial !== undefined ? "r+" : "w+", 0o644);
    } catch (cause) {
      throw ioError(`cannot create ${this.tempPath}`, cause);
    }
    pending.add(this);
  }

  /** Writes all of `data` at `position`; a failure (a full disk) is EIO naming the file. */
  writeAt(data: Uint8Array, position: number): void {
    let done = 0;
    try {
      if (faultAt !== undefined && position + data.length > faultAt) {
        throw Object.assign(new Error("ENOSPC: no space left on device, write (injected by MIGSTREAM_FAULT_ENOSPC_AT)"), { code: "ENOSPC" });
      }
      while (done < data.length) {
        done += writeSync(this.fd, data, done, data.length - done, position + done);
      }
    } catch (cause) {
      throw ioError(`cannot write ${this.tempPath}`, cause);
    }
  }

  /** Makes the file durable and gives it its final name. */
  commit(): void {
    if (!this.#open) throw new MigrationError("EINVAL", "output already closed");
    try {
      fsyncSync(this.fd);
      closeSync(this.fd);
      this.#open = false;
      renameSync(this.tempPath, this.path);
    } catch (cause) {
      this.abort();
      throw ioError(`cannot write ${this.path}`, cause);
    } finally {
      pending.delete(this);
    }
  }

  /** Removes the temporary file; the target is untouched. Safe to call more than once. */
  abort(): void {
    pending.delete(this);
    if (this.#open) {
      this.#open = false;
      try {
        closeSync(this.fd);
      } catch {
        // already closed: nothing to release
      }
    }
    try {
      unlinkSync(this.tempPath);
    } catch {
      // never created, or already renamed or removed
    }
  }
}

/** Removes every temporary file and registered temporary state (on SIGINT/SIGTERM, before exiting). */
export function abortPendingFiles(): void {
  for (const file of [...pending]) file.abort();
  for (const cleanup of [...cleanups]) cleanup();
}

export function ioError(message: string, cause: unknown): MigrationError {
  const detail = cause instanceof Error ? cause.message : String(cause);
  return new MigrationError("EIO", `${message}: ${detail}`, { cause });
}
