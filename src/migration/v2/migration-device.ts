// A device with the VFIO v2 migration state machine: setState() walks the kernel's next-state
// rule one arc at a time and runs each arc through the device (quiesce, sessions, config,
// validation when RESUMING ends).
import { MigrationError } from "../../core/errors.js";
import type { DecoderLimits } from "../../codec/decoder.js";
import type { Compression } from "../../format/constants.js";
import { DeviceModel, type DeviceModelOptions } from "../../device/device-model.js";
import { type DmaLoggingReport, type DmaLoggingStart, type Iova, toU64 } from "../../device/dma-logging.js";
import { estimateStreamBytes, type PrecopyInfo, type PrecopyInfoV2, SavingSession } from "../saving-session.js";
import { ResumingSession } from "../resuming-session.js";
import { sampleLz4Ratio } from "../estimate.js";
import { arcEffect, isMigrationState, type MigrationFeatures, type MigrationState, migrationFlags, nextState } from "./states.js";
import { encodeHeader } from "../../format/header.js";
import { DEFAULT_MAX_RECORD_PAYLOAD } from "../../format/constants.js";

/** What the embedder's device does at the moments migration needs it. Each may fail. */
export interface DeviceCallbacks {
  /**
   * Finish outstanding P2P DMA (entering RUNNING_P2P / PRE_COPY_P2P). `signal` aborts at the
   * deadline (`quiesceTimeoutMs`).
   */
  quiesce?: (signal: AbortSignal) => void | PromiseLike<void>;
  /**
   * Stop: no more DMA, no interrupts, no change to the device's state. Runs on every arc that
   * leaves the running states (RUNNING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P) for STOP or
   * STOP_COPY, once per stop, under the same deadline as `quiesce`.
   */
  stop?: (signal: AbortSignal) => void | PromiseLike<void>;
  /** Run again: every arc from a stopped state back into the running states. */
  start?: () => void | PromiseLike<void>;
  /** The device config blob, taken when the device stops for stop-copy. */
  saveConfig?: () => Uint8Array | PromiseLike<Uint8Array>;
  /** Loads a received config blob, before the received state is committed. */
  loadConfig?: (config: Uint8Array) => void | PromiseLike<void>;
  /**
   * Every arc the device takes, combination paths step by step (leaving a P2P state, the
   * un-quiesce, shows only here). Runs after quiesce / stop / start and before the arc's effect
   * on the data session, under the same deadline and reset rule as `quiesce`; a failure fails
   * the arc like theirs.
   */
  arc?: (from: MigrationState, to: MigrationState, signal: AbortSignal) => void | PromiseLike<void>;
  /** The device was reset (VFIO_DEVICE_RESET): back to its power-on behaviour, RUNNING. */
  reset?: () => void;
}

export interface MigrationDeviceOptions extends DeviceModelOptions {
  /** Compatibility id a stream must carry to resume into this device. Default "". */
  deviceId?: string;
  /** Optional v2 features. Default: both P2P and PRE_COPY. */
  features?: MigrationFeatures;
  callbacks?: DeviceCallbacks;
  /** Deadline for `quiesce` and `stop`; past it the state change fails with ETIMEDOUT. Default: none. */
  quiesceTimeoutMs?: number;
  /** Where the device's DMA writes land (guest memory at an IOVA). Default: recorded only. */
  guestMemory?: (iova: Iova, bytes: Uint8Array) => void;
  /** Offer PRECOPY_INFOv2 with the REINIT flag (`precopyInfoV2()`). Default false. */
  precopyInfoV2?: boolean;
  /** Resuming requires a config blob in the stream. Default: true when loadConfig is given. */
  requireConfig?: boolean;
  checksum?: "xxh3" | "crc32c";
  maxRecordPayload?: number;
  /** Page compression of saving streams ("lz4": a 1.1 stream). Default "none". */
  compress?: Compression;
  /** Limits applied to resuming streams. */
  limits?: DecoderLimits;
}

export type Session = SavingSession | ResumingSession;

/** True for a thenable of any origin (a native promise, another realm's, a library's). */
function isThenable<T>(value: unknown): value is PromiseLike<T> {
  return (typeof value === "object" || typeof value === "function") && value !== null && typeof (value as { then?: unknown }).then === "function";
}

/** Ends a session for good (a reset): a resuming one is aborted, not just closed by its writer. */
function endSession(session: Session): void {
  if (session instanceof ResumingSession) session.abort();
  else session.close();
}

const RUNNING_STATES: ReadonlySet<MigrationState> = new Set(["RUNNING", "RUNNING_P2P", "PRE_COPY", "PRE_COPY_P2P"]);

export class MigrationDevice {
  readonly model: DeviceModel;
  readonly features: Readonly<Required<MigrationFeatures>>;
  readonly deviceId: string;
  /** Page compression of the next saving session (migrateOut sets it from its options). */
  compress: Compression;
  readonly #options: MigrationDeviceOptions;
  /** Where the device is, arc by arc (internal; may be an intermediate state of a path). */
  #state: MigrationState = "RUNNING";
  /** What `state` reports: the state a SET_STATE left, never one in the middle of a path. */
  #committed: MigrationState = "RUNNING";
  #session: Session | undefined;
  /** The tail of the queue of state changes (the kernel's state mutex: callers take turns). */
  #turn: Promise<void> = Promise.resolve();
  /** State changes queued or in flight. */
  #pending = 0;
  /** Bumped by reset(): an arc still awaiting (a quiesce, a callback) then must not land. */
  #resets = 0;
  /** Aborted by reset(), so an arc waiting on a callback that never returns is released. */
  #resetController = new AbortController();
  /** PRE_COPY info is v2 (with flags): the option, or turned on at run time. */
  #infoV2: boolean;

  constructor(options: MigrationDeviceOptions) {
    this.model = new DeviceModel(options);
    this.features = { p2p: options.features?.p2p ?? true, precopy: options.features?.precopy ?? true };
    this.deviceId = options.deviceId ?? "";
    this.compress = options.compress ?? "none";
    this.#options = options;
    this.#infoV2 = options.precopyInfoV2 === true;
    try {
      this.#checkOptions(options);
    } catch (error) {
      this.model.free();
      throw error;
    }
  }

  /**
   * The current state (kernel naming). A new device is RUNNING. While a state change is in
   * flight it is the state the change started from; intermediate states of a path never show.
   */
  get state(): MigrationState {
    return this.#committed;
  }

  /**
   * Configuration errors now rather than at the first state change: the stream header a saving
   * session would write (page size against maxRecordPayload, checksum, compression, device id),
   * the features, the deadline and the callbacks.
   */
  #checkOptions(options: MigrationDeviceOptions): void {
    const fail = (message: string): never => {
      throw new MigrationError("EINVAL", message);
    };
    if (typeof this.deviceId !== "string") fail("deviceId must be a string");
    for (const key of ["p2p", "precopy"] as const) {
      const value = options.features?.[key];
      if (value !== undefined && typeof value !== "boolean") fail(`features.${key} must be a boolean`);
    }
    const timeout = options.quiesceTimeoutMs;
    if (timeout !== undefined && (typeof timeout !== "number" || !Number.isFinite(timeout) || timeout < 0))
      fail("quiesceTimeoutMs must be a finite number >= 0");
    for (const [name, callback] of Object.entries(options.callbacks ?? {})) {
      if (callback !== undefined && typeof callback !== "function") fail(`callbacks.${name} must be a function`);
    }
    if (options.checksum !== undefined && options.checksum !== "xxh3" && options.checksum !== "crc32c")
      fail(`unknown checksum ${JSON.stringify(options.checksum)}`);
    const max = options.maxRecordPayload;
    if (max !== undefined && (!Number.isInteger(max) || max < this.model.pageSize)) {
      fail(`maxRecordPayload ${String(max)} must be an integer of at least the page size ${this.model.pageSize}`);
    }
    encodeHeader({
      regions: this.model.layout,
      pageSize: this.model.pageSize,
      deviceId: this.deviceId,
      checksum: options.checksum ?? "xxh3",
      maxRecordPayload: max ?? Math.max(DEFAULT_MAX_RECORD_PAYLOAD, this.model.pageSize),
      compression: this.compress,
      baseDigest: undefined,
    });
  }

  /** The VFIO_MIGRATION_* flags this device reports (VFIO_DEVICE_FEATURE_MIGRATION). */
  migrationFlags(): number {
    return migrationFlags(this.features);
  }

  /** The open data session, if any. */
  get session(): Session | undefined {
    return this.#session;
  }

  /**
   * True while the device runs and may change its state. This follows the device itself: once a
   * state change has stopped it (an arc in flight), it is false although `state` still shows
   * where the change started.
   */
  get running(): boolean {
    return RUNNING_STATES.has(this.#state);
  }

  /** The workload's write: only while the device runs. */
  write(region: number | string, offset: number, bytes: Uint8Array): void {
    this.#checkRunning("write");
    this.model.write(region, offset, bytes);
    this.#changed();
  }

  markDirty(region: number | string, offset: number, length: number): void {
    this.#checkRunning("markDirty");
    this.model.markDirty(region, offset, length);
    this.#changed();
  }

  /**
   * The workload's DMA write of `bytes` to guest memory at `iova`: only while the device runs
   * (a stopped device does no DMA). Recorded by DMA dirty logging when a session covers it,
   * then handed to `guestMemory` if one was given.
   */
  dmaWrite(iova: Iova, bytes: Uint8Array): void {
    this.#checkRunning("dmaWrite");
    const at = toU64(iova);
    if (at === undefined || !(bytes instanceof Uint8Array)) {
      throw new MigrationError("EINVAL", "dmaWrite needs a u64 IOVA (a safe integer or a bigint) and a Uint8Array", { state: this.#state });
    }
    if (at + BigInt(bytes.length) > 1n << 64n) {
      throw new MigrationError("EOVERFLOW", `a DMA write of ${bytes.length} bytes at ${at} passes the end of the 64-bit IOVA space`, { state: this.#state });
    }
    this.model.dma.record(iova, bytes.length);
    this.#options.guestMemory?.(iova, bytes);
  }

  /** VFIO_DEVICE_FEATURE_DMA_LOGGING_START: returns the page size the device tracks at. */
  startDmaLogging(request: DmaLoggingStart): { pageSize: number } {
    return this.model.dma.start(request);
  }

  /** VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT: read-and-clear bitmap of the pages written by DMA. */
  reportDmaLogging(request: DmaLoggingReport): Uint8Array {
    return this.model.dma.report(request);
  }

  /** VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP. */
  stopDmaLogging(): void {
    this.model.dma.stop();
  }

  /**
   * VFIO_DEVICE_FEATURE_MIG_DATA_SIZE: estimated stream bytes stop-copy would produce now, in
   * any state. With a saving session open, what is left of it; otherwise a whole stream
   * (without the config blob, which only stop-copy asks for).
   */
  stopCopySize(): number {
    const session = this.#session;
    if (session instanceof SavingSession) return session.pendingBytes();
    return estimateStreamBytes(this.model, this.deviceId, 0, this.compress === "lz4" ? sampleLz4Ratio(this.model) : 1);
  }

  /**
   * The device re-initialised while running (a firmware reload, say): in PRE_COPY states its
   * whole state becomes initial data again (PRECOPY_INFOv2 says REINIT). Refused when stopped.
   */
  reinitialize(): void {
    this.#checkRunning("reinitialize");
    const session = this.#session;
    if (session instanceof SavingSession && !session.closed && (this.#state === "PRE_COPY" || this.#state === "PRE_COPY_P2P")) {
      session.reinitialize();
    }
  }

  /** PRE_COPY info (VFIO_MIG_GET_PRECOPY_INFO): only in PRE_COPY and PRE_COPY_P2P. */
  precopyInfo(): PrecopyInfo {
    if ((this.#state !== "PRE_COPY" && this.#state !== "PRE_COPY_P2P") || !(this.#session instanceof SavingSession)) {
      throw new MigrationError("EINVAL", `PRE_COPY info is only available in the PRE_COPY states, device is ${this.#state}`, {
        state: this.#state,
      });
    }
    return this.#session.precopyInfo();
  }

  /** True once PRECOPY_INFOv2 is on (the `precopyInfoV2` option, or enablePrecopyInfoV2()). */
  get precopyInfoV2Enabled(): boolean {
    return this.#infoV2;
  }

  /**
   * VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2 SET: from now on PRE_COPY info is v2 (flags carry
   * VFIO_PRECOPY_INFO_REINIT), for an open saving session too. Needs PRE_COPY (EINVAL without).
   */
  enablePrecopyInfoV2(): void {
    if (!this.features.precopy) throw new MigrationError("EINVAL", "PRECOPY_INFOv2 needs a device with PRE_COPY", { state: this.#committed });
    this.#infoV2 = true;
    const session = this.#session;
    if (session instanceof SavingSession && !session.closed) session.enableInfoV2();
  }

  /** PRECOPY_INFOv2 (opt-in with `precopyInfoV2`): only in PRE_COPY and PRE_COPY_P2P. */
  precopyInfoV2(): PrecopyInfoV2 {
    if ((this.#state !== "PRE_COPY" && this.#state !== "PRE_COPY_P2P") || !(this.#session instanceof SavingSession)) {
      throw new MigrationError("EINVAL", `PRE_COPY info is only available in the PRE_COPY states, device is ${this.#state}`, {
        state: this.#state,
      });
    }
    return this.#session.precopyInfoV2();
  }

  /**
   * Moves to `target` through the kernel's arcs. Returns the data session the last arc opened
   * (a saving session for STOP_COPY / PRE_COPY*, a resuming one for RESUMING), else undefined.
   * On failure the device stays in the last state it reached (ERROR if leaving RESUMING failed
   * validation), and the error names it. Calls take turns, like SET_STATE under the kernel's
   * state mutex: a second call waits for the first to finish, then starts from where it left.
   */
  setState(target: MigrationState): Promise<Session | undefined> {
    if (!isMigrationState(target)) {
      return Promise.reject(new MigrationError("EINVAL", `invalid migration state ${JSON.stringify(target)}`, { state: this.#committed }));
    }
    // An idle device starts at once (so a reset right after the call interrupts this change).
    const turn = this.#turn;
    this.#pending++;
    const result = this.#pending === 1 ? this.#walk(target) : turn.then(() => this.#walk(target));
    this.#turn = result.then(
      () => void this.#pending--,
      () => void this.#pending--,
    );
    return result;
  }

  async #walk(target: MigrationState): Promise<Session | undefined> {
    const from = this.#state;
    const resets = this.#resets;
    let opened: Session | undefined;
    try {
      while (this.#state !== target) {
        const step = nextState(this.#state, target, this.features);
        let session: Session | undefined;
        try {
          session = await this.#arc(this.#state, step, from, target, resets);
        } catch (error) {
          if (this.#resets !== resets) throw this.#interrupted(from, target);
          throw error;
        }
        if (this.#resets !== resets) {
          // The device was reset while the arc was in flight: reset wins, the arc's result
          // (a session it opened included) is discarded.
          if (session) endSession(session);
          if (this.#session === session) this.#session = undefined;
          throw this.#interrupted(from, target);
        }
        if (session) opened = session;
        this.#state = step;
      }
      return opened;
    } finally {
      // Done (or failed where it stands): only now does the outside see where the device is.
      if (this.#resets === resets) this.#committed = this.#state;
    }
  }

  /**
   * Device reset: back to RUNNING from any state, ERROR included; any session is ended, and a
   * state change still in progress fails with ECANCELED instead of landing afterwards.
   */
  reset(): void {
    this.#resetState();
    // A reset device has no DMA logging session: the VMM starts a new one if it wants.
    this.model.dma.stop();
    const callback = this.#options.callbacks?.reset;
    if (callback) {
      try {
        callback();
      } catch (error) {
        throw error instanceof MigrationError
          ? error
          : new MigrationError("EIO", `device reset callback failed: ${String(error)}`, { cause: error, state: "RUNNING" });
      }
    }
  }

  /** The migration side of a reset: RUNNING, no session, state changes in flight cancelled. */
  #resetState(): void {
    this.#resets++;
    this.#resetController.abort();
    this.#resetController = new AbortController();
    if (this.#session) endSession(this.#session);
    this.#session = undefined;
    this.#state = "RUNNING";
    this.#committed = "RUNNING";
  }

  /**
   * Declares the device failed where it stands: ERROR, any session ended, content untouched.
   * What a driver does when it could neither finish a transition nor restore the state before it
   * (the v1 migration region's error state, 6), so that the state it reports and the device's
   * state agree. Only reset() leaves ERROR. EBUSY while a state change is in progress.
   */
  enterError(): void {
    if (this.#pending > 0) {
      throw new MigrationError("EBUSY", "cannot enter ERROR while a state change is in progress", { state: this.#committed });
    }
    this.#session?.close();
    this.#session = undefined;
    this.#state = "ERROR";
    this.#committed = "ERROR";
  }

  /** Releases the device's core memory. */
  free(): void {
    this.#resetState();
    this.model.free();
  }

  /** Wakes a saving session's whenReadable() waiters after the workload changed something. */
  #changed(): void {
    const session = this.#session;
    if (session instanceof SavingSession) session.changed();
  }

  #interrupted(from: MigrationState, target: MigrationState): MigrationError {
    return new MigrationError("ECANCELED", `${from} -> ${target} interrupted by a device reset; device is in ${this.#state}`, {
      state: this.#state,
      from,
      to: target,
    });
  }

  async #arc(from: MigrationState, to: MigrationState, origin: MigrationState, target: MigrationState, resets: number): Promise<Session | undefined> {
    const fail = (error: unknown, state: MigrationState): MigrationError => {
      const base = error instanceof MigrationError ? error : new MigrationError("EIO", `device callback failed: ${String(error)}`, { cause: error });
      return new MigrationError(
        base.code,
        `${origin} -> ${target} failed${origin === from && target === to ? "" : ` at ${from} -> ${to}`}: ${base.message}; device is in ${state}`,
        {
          state,
          from: origin,
          to: target,
          cause: base,
          ...(base.recordIndex !== undefined ? { recordIndex: base.recordIndex } : {}),
          ...(base.byteOffset !== undefined ? { byteOffset: base.byteOffset } : {}),
        },
      );
    };
    const callbacks = this.#options.callbacks ?? {};
    try {
      if ((to === "RUNNING_P2P" && from === "RUNNING") || (to === "PRE_COPY_P2P" && from === "PRE_COPY")) {
        await this.#underDeadline(callbacks.quiesce, "quiesce");
      }
      // Leaving the running states: the device stops DMA, interrupts and state changes. Every
      // such arc ends in STOP or STOP_COPY, so a stop is announced exactly once.
      if (RUNNING_STATES.has(from) && (to === "STOP" || to === "STOP_COPY")) await this.#underDeadline(callbacks.stop, "stop");
      else if (!RUNNING_STATES.has(from) && RUNNING_STATES.has(to)) await this.#untilReset(callbacks.start?.());
      const onArc = callbacks.arc;
      if (onArc) await this.#underDeadline((signal) => onArc(from, to, signal), `take the arc ${from} -> ${to}`);
      switch (arcEffect(from, to)) {
        case "open-saving": {
          const session = new SavingSession(this.model, {
            deviceId: this.deviceId,
            precopy: to !== "STOP_COPY",
            ...(this.#infoV2 ? { precopyInfoV2: true } : {}),
            ...(this.#options.checksum ? { checksum: this.#options.checksum } : {}),
            ...(this.#options.maxRecordPayload ? { maxRecordPayload: this.#options.maxRecordPayload } : {}),
            compress: this.compress,
          });
          if (to === "STOP_COPY") {
            try {
              session.stop(await this.#untilReset(callbacks.saveConfig?.()));
            } catch (error) {
              session.close();
              throw error;
            }
          }
          if (this.#resets !== resets) {
            // A late answer after a reset installs nothing.
            session.close();
            throw this.#interrupted(origin, target);
          }
          this.#session = session;
          return session;
        }
        case "continue-saving":
          if (to === "STOP_COPY") (this.#session as SavingSession).stop(await this.#untilReset(callbacks.saveConfig?.()));
          return undefined;
        case "open-resuming": {
          const session = new ResumingSession(this.model, {
            deviceId: this.deviceId,
            requireConfig: this.#options.requireConfig ?? callbacks.loadConfig !== undefined,
            ...this.#options.limits,
          });
          this.#session = session;
          return session;
        }
        case "close": {
          const session = this.#session;
          this.#session = undefined;
          if (session instanceof ResumingSession) await this.#commitResume(session, resets);
          else session?.close();
          return undefined;
        }
        case "none":
          return undefined;
      }
    } catch (error) {
      // After a reset nothing of this arc may land, not even its failure state.
      if (this.#resets !== resets) throw error;
      if (from === "RESUMING") {
        // Leaving RESUMING is the end of the stream: it either validates or needs a reset.
        this.#state = "ERROR";
        throw fail(error, "ERROR");
      }
      throw fail(error, from);
    }
  }

  async #commitResume(session: ResumingSession, resets: number): Promise<void> {
    const { regions, config } = session.finish();
    try {
      if (config !== undefined) await this.#untilReset(this.#options.callbacks?.loadConfig?.(config));
      // A reset while the config loaded: the device runs on its old content, and writes made
      // since must not be overwritten by the stream's.
      if (this.#resets !== resets) throw new MigrationError("ECANCELED", "resume interrupted by a device reset");
    } catch (error) {
      for (const r of regions) r.free();
      throw error;
    }
    this.model.replaceContent(regions);
  }

  /**
   * `value`, unless the device is reset first: then ECANCELED at once (and `controller`, the
   * callback's own signal, is aborted so it can stop too). Any thenable counts: a promise of
   * another realm or a library's thenable is awaited under the same reset rule.
   */
  #untilReset<T>(value: T | PromiseLike<T>, controller?: AbortController): Promise<T> {
    const reset = this.#resetController.signal;
    if (!isThenable<T>(value)) return Promise.resolve(value);
    return new Promise<T>((resolve, reject) => {
      const onReset = (): void => {
        controller?.abort();
        reject(new MigrationError("ECANCELED", "interrupted by a device reset"));
      };
      reset.addEventListener("abort", onReset, { once: true });
      // Promise.resolve adopts the thenable (and survives one whose then() throws).
      Promise.resolve()
        .then(() => value)
        .then(
          (v) => {
            reset.removeEventListener("abort", onReset);
            resolve(v);
          },
          (e: unknown) => {
            reset.removeEventListener("abort", onReset);
            reject(e);
          },
        );
    });
  }

  /** Runs a device callback under `quiesceTimeoutMs` (ETIMEDOUT past it) and the reset rule. */
  async #underDeadline(callback: ((signal: AbortSignal) => void | PromiseLike<void>) | undefined, what: string): Promise<void> {
    if (!callback) return;
    const timeout = this.#options.quiesceTimeoutMs;
    const controller = new AbortController();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const deadline =
      timeout === undefined
        ? undefined
        : new Promise<never>((_, reject) => {
            timer = setTimeout(() => {
              controller.abort();
              reject(new MigrationError("ETIMEDOUT", `device did not ${what} within ${timeout} ms`, { state: this.#state }));
            }, timeout);
          });
    try {
      const done = Promise.resolve().then(() => callback(controller.signal));
      await this.#untilReset(deadline ? Promise.race([done, deadline]) : done, controller);
    } finally {
      if (timer !== undefined) clearTimeout(timer);
    }
  }

  #checkRunning(what: string): void {
    if (!this.running) throw new MigrationError("EINVAL", `${what} while the device is ${this.#state} (not running)`, { state: this.#state });
  }
}
