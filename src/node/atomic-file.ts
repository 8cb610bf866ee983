// Output files that appear only when complete: data goes to a temporary name beside the target
// and is renamed over it only after everything verified. On failure or interruption the
// temporary file is removed and an existing target is left as it was. What a killed process
// could not remove, the next output written into the same directory does (removeStaleTemporaries).
//
// Device state may hold a guest's secrets: a new file is created 0600, and a replaced file keeps
// its mode (and, when running as root, its owner). A symlink is followed: its target is what
// gets replaced, and the link itself stays.
import {
  close,
  closeSync,
  copyFileSync,
  readdirSync,
  fchmodSync,
  fchownSync,
  fdatasync,
  fsyncSync,
  lstatSync,
  openSync,
  readlinkSync,
  renameSync,
  type Stats,
  statSync,
  unlinkSync,
  writeSync,
} from "node:fs";
import { randomBytes } from "node:crypto";
import { basename, dirname, join, resolve } from "node:path";
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
 * Makes a rename in `dir` durable (the directory's entry, not only the file's data). A file
 * system that cannot sync a directory (EINVAL) has nothing more to make durable.
 */
function syncDirectory(dir: string): void {
  let fd: number;
  try {
    fd = openSync(dir, "r");
  } catch {
    return; // not readable: the file itself is durable, its name as durable as the system makes it
  }
  try {
    fsyncSync(fd);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "EINVAL") throw error;
  } finally {
    closeSync(fd);
  }
}

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

/** The path a write to `path` lands on: a symlink's target (followed to the end), or `path`. */
export function resolveOutputPath(path: string): string {
  let current = resolve(path);
  for (let hops = 0; hops < 40; hops++) {
    let stats: Stats;
    try {
      stats = lstatSync(current);
    } catch {
      return current; // does not exist (yet): this is where the file will be
    }
    if (!stats.isSymbolicLink()) return current;
    current = resolve(dirname(current), readlinkSync(current));
  }
  throw new MigrationError("EIO", `cannot write ${path}: too many levels of symbolic links`);
}

function statOrUndefined(path: string): Stats | undefined {
  try {
    return statSync(path);
  } catch {
    return undefined;
  }
}

/** `.<output>.<pid>.<8 hex>.migstream-tmp`: the temporary names AtomicFile makes. */
const TEMP_NAME = /^\..+\.(\d+)\.[0-9a-f]{8}\.migstream-tmp$/;

/** True unless `pid` is certainly gone: EPERM means it lives under another user. */
function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code !== "ESRCH";
  }
}

/**
 * Removes the temporaries in `dir` that a killed process left behind (SIGKILL, a crash, a power
 * cut: no cleanup ran), so a full-size partial state does not stay on disk: those whose writer
 * process no longer exists. Best effort: what cannot be read or removed stays. Returns the names
 * removed. Process ids are this machine's: a directory shared with another host or PID namespace
 * must not hold that host's outputs in progress.
 */
export function removeStaleTemporaries(dir: string): string[] {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  const removed: string[] = [];
  for (const name of names) {
    const match = TEMP_NAME.exec(name);
    if (!match) continue;
    const pid = Number(match[1]);
    if (pid === process.pid || processExists(pid)) continue;
    try {
      unlinkSync(join(dir, name));
      removed.push(name);
    } catch {
      // Gone already (another run cleaned it), or not ours to remove.
    }
  }
  return removed;
}

/**
 * Bytes written between background flushes. Left to itself, the kernel writes a large output
 * back only when commit's fsync asks for all of it at once (a third of a 1 GiB decode here);
 * flushed as it is written, the disk works while the codec does, and commit waits for the tail.
 */
export const SYNC_AHEAD_BYTES = 64 << 20;
/**
 * Background flushes at a time. Each ends in a callback, which a writer that never returns to
 * the event loop delays: then no more than these start (and hold a descriptor each).
 */
const FLUSHES_AHEAD = 2;

export class AtomicFile {
  /** The file that is replaced on commit (a symlink's target when `path` was a symlink). */
  readonly path: string;
  readonly tempPath: string;
  readonly fd: number;
  #open = true;
  /** Bytes written since the last background flush began. */
  #unflushed = 0;
  /** Background flushes running (each on a descriptor of its own, see {@link #flushAhead}). */
  #flushing = 0;

  /**
   * Creates the temporary file; `initial` (a path) is copied into it first (a base to patch).
   * Its mode is the existing target's, or 0600 for a new file.
   */
  constructor(path: string, initial?: string) {
    this.path = resolveOutputPath(path);
    removeStaleTemporaries(dirname(this.path));
    this.tempPath = join(dirname(this.path), `.${basename(this.path)}.${process.pid}.${randomBytes(4).toString("hex")}.migstream-tmp`);
    const existing = statOrUndefined(this.path);
    try {
      if (initial !== undefined) copyFileSync(initial, this.tempPath);
      this.fd = openSync(this.tempPath, initial !== undefined ? "r+" : "wx+", 0o600);
    } catch (cause) {
      this.#removeTemp();
      // The temporary name is an implementation detail: errors name the output.
      throw ioError(`cannot write ${path}`, cause, this.tempPath, path);
    }
    pending.add(this);
    try {
      fchmodSync(this.fd, existing ? existing.mode & 0o7777 : 0o600);
      if (existing && typeof process.getuid === "function" && process.getuid() === 0) fchownSync(this.fd, existing.uid, existing.gid);
    } catch (cause) {
      this.abort();
      throw ioError(`cannot set the mode of ${path}`, cause, this.tempPath, path);
    }
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
      throw ioError(`cannot write ${this.path}`, cause, this.tempPath, this.path);
    }
    this.#unflushed += data.length;
    if (this.#unflushed >= SYNC_AHEAD_BYTES && this.#flushing < FLUSHES_AHEAD) this.#flushAhead();
  }

  /**
   * Starts writing back what was written so far, in the background (Node's thread pool). It
   * uses a descriptor of its own, closed when it is done: commit and abort close `fd` without
   * waiting for it, and a descriptor closed under a running fdatasync could be reused by the
   * time it runs. Best effort: a failure here is reported, if it matters, by commit's fsync.
   */
  #flushAhead(): void {
    // The next try comes after another SYNC_AHEAD_BYTES, whatever happens to this one.
    this.#unflushed = 0;
    let fd: number;
    try {
      fd = openSync(this.tempPath, "r");
    } catch {
      return; // not readable (a write-only mode), or out of descriptors: commit flushes everything
    }
    this.#flushing++;
    fdatasync(fd, () => {
      close(fd, () => this.#flushing--);
    });
  }

  /** Makes the file durable and gives it its final name. */
  commit(): void {
    if (!this.#open) throw new MigrationError("EINVAL", "output already closed");
    try {
      fsyncSync(this.fd);
      // Closed once, whatever closeSync says: a second close could hit a reused number.
      this.#open = false;
      closeSync(this.fd);
      renameSync(this.tempPath, this.path);
      syncDirectory(dirname(this.path));
    } catch (cause) {
      this.abort();
      throw ioError(`cannot write ${this.path}`, cause, this.tempPath, this.path);
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
    this.#removeTemp();
  }

  #removeTemp(): void {
    try {
      unlinkSync(this.tempPath);
    } catch {
      // never created, or already renamed or removed
    }
  }
}

/** Removes every temporary file and registered temporary state (on signals, before exiting). */
export function abortPendingFiles(): void {
  for (const file of [...pending]) file.abort();
  for (const cleanup of [...cleanups]) cleanup();
}

/**
 * An EIO error for a failed I/O call. Node's messages carry the path they were given; when that
 * is a temporary name, it is replaced by the output's name (`temp` -> `shown`).
 */
export function ioError(message: string, cause: unknown, temp?: string, shown?: string): MigrationError {
  let detail = cause instanceof Error ? cause.message : String(cause);
  if (temp !== undefined && shown !== undefined) detail = detail.split(temp).join(shown);
  return new MigrationError("EIO", `${message}: ${detail}`, { cause });
}
