// "No progress for too long": the deadline on everything that waits for a peer. Progress is
// PROGRESS_BYTES moving (or the end of the stream); fewer bytes do not restart the clock, so a
// peer dripping a byte now and then cannot hold a transfer open forever.
import { MigrationError } from "../../core/errors.js";

/** The least amount of data that counts as progress. */
export const PROGRESS_BYTES = 64 * 1024;

/** Default for `timeoutMs`: the longest a transfer may go without progress. */
export const DEFAULT_TIMEOUT_MS = 60_000;

export class ProgressDeadline {
  readonly timeoutMs: number;
  readonly #timer: ReturnType<typeof setTimeout>;
  #pending = 0;
  #stopped = false;

  /** Starts the clock; `onExpire` runs once if no progress is made within `timeoutMs`. */
  constructor(timeoutMs: number, onExpire: () => void) {
    checkTimeout(timeoutMs);
    this.timeoutMs = timeoutMs;
    this.#timer = setTimeout(() => {
      this.#stopped = true;
      onExpire();
    }, timeoutMs);
  }

  /** `bytes` moved; the clock restarts once they add up to PROGRESS_BYTES. */
  moved(bytes: number): void {
    if (this.#stopped) return;
    this.#pending += bytes;
    if (this.#pending >= PROGRESS_BYTES) this.restart();
  }

  /** Progress of another kind (the rest of the stream, a phase completed): restart the clock. */
  restart(): void {
    if (this.#stopped) return;
    this.#pending = 0;
    this.#timer.refresh();
  }

  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
  }
}

/** Checks a user-supplied timeout (ms). */
export function checkTimeout(timeoutMs: number | undefined): number {
  const value = timeoutMs ?? DEFAULT_TIMEOUT_MS;
  if (!Number.isFinite(value) || value <= 0 || value > 2 ** 31 - 1) {
    throw new MigrationError("EINVAL", `timeout must be a positive number of milliseconds up to 2^31-1, got ${value}`);
  }
  return value;
}
