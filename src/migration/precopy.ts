// The pre-copy driver: rounds of reading a device's saving session while it keeps running,
// until what is left is small enough (or rounds stop helping), then stop-copy for the rest.
// Per round it reports what QEMU's migration statistics report: pages and bytes sent, the
// dirty rate, and the downtime to expect at the link's bandwidth.
import { MigrationError } from "../core/errors.js";
import type { Compression } from "../format/constants.js";
import { SavingSession } from "./saving-session.js";
import type { MigrationDevice } from "./v2/migration-device.js";

export interface PrecopyRoundReport {
  round: number;
  pages: number;
  bytes: number;
  /** Dirty bytes left when the round ended. */
  dirtyBytes: number;
  durationMs: number;
  /** Bytes dirtied per second during the round (dirty bytes left / round duration). */
  dirtyRate: number;
  /** Time to send the dirty bytes left at the bandwidth, if stop-copy started now. */
  expectedDowntimeMs: number;
}

export interface PrecopyOptions {
  /**
   * Receives the stream, in order. Awaited, so a slow link slows the migration (backpressure).
   * The chunk must stay unchanged until `release` runs (once it was sent); a sender that calls
   * it lets the chunk's memory carry later stream bytes instead of fresh memory for each chunk.
   */
  send: (chunk: Uint8Array, release: () => void) => void | Promise<void>;
  /** Stop-copy once dirty bytes are at most this. Default 1 MiB. */
  thresholdBytes?: number;
  /** At most this many pre-copy rounds. Default 30. */
  maxRounds?: number;
  /** A round that shrinks the dirty bytes by less than this fraction is no progress. Default 0.05. */
  minProgress?: number;
  /** Bytes per second for the downtime estimate. Default: the throughput measured so far. */
  bandwidth?: number;
  /** Largest chunk read from the session at once. Default 1 MiB. */
  chunkSize?: number;
  /** Page compression of the stream ("lz4": a 1.1 stream). Default: the device's own setting. */
  compress?: Compression;
  onRound?: (round: PrecopyRoundReport) => void;
  signal?: AbortSignal;
  /**
   * Initial data first (QEMU's switchover-ack): do not stop-copy before every byte of the
   * initial data was sent (the session's initial_bytes reached 0), whatever the rounds say.
   */
  waitForInitialData?: boolean;
  /**
   * Switchover permission, e.g. the destination's ack that it loaded the initial data: pre-copy
   * goes on until it settles. While there is nothing to send, the driver waits on the session's
   * whenReadable() (no polling). A rejection fails the migration.
   */
  switchover?: PromiseLike<unknown>;
}

export interface MigrationReport {
  rounds: PrecopyRoundReport[];
  /** Why pre-copy ended. */
  converged: "threshold" | "max-rounds" | "no-progress" | "no-precopy";
  /** True if all initial data was sent before stop-copy began. */
  initialDataSent: boolean;
  bytes: number;
  stopCopyBytes: number;
  /** Measured time with the device stopped (STOP_COPY entry to the end of the stream). */
  downtimeMs: number;
  durationMs: number;
  /** Stream bytes per second over the whole migration. */
  throughput: number;
}

// Lets the device's workload run between reads; setImmediate where it exists (Node), a macrotask
// elsewhere, so the module stays free of Node-only globals.
const yieldToWorkload = (): Promise<void> => new Promise((resolve) => (typeof setImmediate === "function" ? setImmediate(resolve) : setTimeout(resolve, 0)));

/**
 * Migrates `device` out: pre-copy rounds (when it supports PRE_COPY and runs), then stop-copy,
 * then STOP. The stream goes to `options.send`. The device's workload keeps running between
 * reads. As QEMU's save_setup: a running device starts pre-copy, a stopped one (STOP) goes
 * straight to stop-copy, and any other state is refused with EINVAL before anything changes;
 * that includes a device already in PRE_COPY / PRE_COPY_P2P, whose session (and whatever the
 * caller read of it) stays the caller's: its stream cannot be restarted from the beginning.
 */
export async function migrateOut(device: MigrationDevice, options: PrecopyOptions): Promise<MigrationReport> {
  const origin = device.state;
  if (origin !== "RUNNING" && origin !== "RUNNING_P2P" && origin !== "STOP") {
    throw new MigrationError(
      "EINVAL",
      `migrateOut needs a device in RUNNING, RUNNING_P2P or STOP, it is in ${origin}${device.session ? " with a session open (left untouched)" : ""}`,
      { state: origin },
    );
  }
  const threshold = options.thresholdBytes ?? 1 << 20;
  const maxRounds = options.maxRounds ?? 30;
  const minProgress = options.minProgress ?? 0.05;
  const chunkSize = options.chunkSize ?? 1 << 20;
  const { signal } = options;
  if (options.compress !== undefined) device.compress = options.compress;
  const started = performance.now();
  let bytes = 0;
  const rounds: PrecopyRoundReport[] = [];
  let converged: MigrationReport["converged"] = "no-precopy";
  // The session whose chunks are being sent: they go back to it once sent (see release()).
  let current: SavingSession | undefined;
  const send = async (chunk: Uint8Array): Promise<void> => {
    bytes += chunk.length;
    const from = current;
    await options.send(chunk, () => from?.release(chunk));
  };
  const check = (): void => {
    if (signal?.aborted) throw new MigrationError("ECANCELED", "migration aborted", { state: device.state });
  };
  // Switchover permission: settled (or failed) once the caller's promise settles.
  let switchoverState = (options.switchover ? "pending" : "allowed") as "pending" | "allowed" | { error: unknown };
  const switchover = options.switchover
    ? Promise.resolve(options.switchover).then(
        () => void (switchoverState = "allowed"),
        (error: unknown) => void (switchoverState = { error }),
      )
    : undefined;
  const mayStop = (session: SavingSession): boolean => {
    if (typeof switchoverState === "object") throw switchoverState.error;
    return switchoverState === "allowed" && (!options.waitForInitialData || session.initialDataSent);
  };
  let initialDataSent = false;

  try {
    let session: SavingSession;
    if (device.features.precopy && origin !== "STOP") {
      session = (await device.setState("PRE_COPY")) as SavingSession;
      current = session;
      let roundStart = performance.now();
      let previousDirty = Infinity;
      // Reports every round the session completed since the last look, and says whether one of
      // them ends pre-copy. A read may complete more than one round (the encoder can hold a
      // pass's output back), and the read that completes one may then fail with ENOMSG: no
      // round may go unreported either way.
      const takeRounds = (): MigrationReport["converged"] | undefined => {
        let reason: MigrationReport["converged"] | undefined;
        while (session.rounds.length > rounds.length) {
          const r = session.rounds[rounds.length]!;
          const now = performance.now();
          const durationMs = now - roundStart;
          roundStart = now;
          const bandwidth = options.bandwidth ?? bytes / Math.max((now - started) / 1000, 1e-6);
          const report: PrecopyRoundReport = {
            round: r.round,
            pages: r.pages,
            bytes: r.bytes,
            dirtyBytes: r.dirtyBytes,
            durationMs,
            dirtyRate: r.dirtyBytes / Math.max(durationMs / 1000, 1e-6),
            expectedDowntimeMs: (r.dirtyBytes / bandwidth) * 1000,
          };
          rounds.push(report);
          options.onRound?.(report);
          if (reason !== undefined) continue;
          if (r.dirtyBytes <= threshold) reason = "threshold";
          else if (rounds.length >= maxRounds) reason = "max-rounds";
          else if (r.dirtyBytes > previousDirty * (1 - minProgress)) reason = "no-progress";
          previousDirty = r.dirtyBytes;
        }
        return reason;
      };
      let reason: MigrationReport["converged"] | undefined;
      for (;;) {
        check();
        let chunk: Uint8Array | null;
        try {
          chunk = session.read(chunkSize);
        } catch (error) {
          if (error instanceof MigrationError && error.code === "ENOMSG") {
            // Nothing left to send for now: whatever the rounds said, what is left is 0 bytes.
            takeRounds();
            reason = "threshold";
            if (mayStop(session)) break;
            // Not allowed to switch over yet: wait for data or for the permission, no timers.
            await Promise.race([session.whenReadable(), switchover]);
            continue;
          }
          throw error;
        }
        if (chunk) await send(chunk);
        await yieldToWorkload();
        reason = takeRounds() ?? reason;
        if (reason !== undefined && mayStop(session)) {
          // The round is over but some of it may still be queued: send it while the device
          // runs, so stop-copy (the downtime) carries only what is dirty now.
          while (session.buffered > 0) await send(session.read(chunkSize)!);
          break;
        }
      }
      converged = reason ?? "threshold";
      initialDataSent = session.initialDataSent;
      check();
    } else if (switchover) {
      await switchover;
      if (typeof switchoverState === "object") throw switchoverState.error;
    }
    const stopAt = performance.now();
    const stopped = await device.setState("STOP_COPY");
    session = (stopped ?? device.session) as SavingSession;
    current = session;
    let stopCopyBytes = 0;
    for (let chunk = session.read(chunkSize); chunk !== null; chunk = session.read(chunkSize)) {
      stopCopyBytes += chunk.length;
      await send(chunk);
    }
    const downtimeMs = performance.now() - stopAt;
    await device.setState("STOP");
    const durationMs = performance.now() - started;
    return {
      rounds,
      converged,
      initialDataSent,
      bytes,
      stopCopyBytes,
      downtimeMs,
      durationMs,
      throughput: bytes / Math.max(durationMs / 1000, 1e-6),
    };
  } catch (error) {
    // A failed or aborted migration gives the device back to its workload, in stop-copy too:
    // the target never validated, so the source must carry on (as QEMU does on failure).
    if (device.state === "PRE_COPY" || device.state === "PRE_COPY_P2P" || device.state === "STOP_COPY") {
      await device.setState("RUNNING").catch(() => device.reset());
    }
    throw error;
  }
}

/**
 * Migrates a stream into `device` (which must be able to reach RESUMING): every chunk of
 * `source` is written to the resuming session, then RESUMING is left for `final` (default
 * RUNNING), which validates the stream. On any failure the device is in ERROR (or where the
 * failing arc left it) with its previous content untouched.
 */
export async function migrateIn(
  device: MigrationDevice,
  source: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
  final: "RUNNING" | "STOP" = "RUNNING",
): Promise<{ bytes: number }> {
  if (device.state !== "STOP" && device.state !== "RESUMING") await device.setState("STOP");
  const session = device.state === "RESUMING" ? device.session : await device.setState("RESUMING");
  if (!session || session instanceof SavingSession) throw new MigrationError("EINVAL", "device has no resuming session", { state: device.state });
  let bytes = 0;
  try {
    for await (const chunk of source) bytes += session.write(chunk);
  } catch (error) {
    // The stream failed (or its source did): leaving RESUMING now fails validation → ERROR.
    await device.setState(final).catch(() => undefined);
    throw error;
  }
  await device.setState(final);
  return { bytes };
}
