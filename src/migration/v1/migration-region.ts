/**
 * The VFIO migration region of uAPI v1 (Linux 5.8 to 5.17, plus the NDMA bit of the December 2021
 * RFC), emulated on top of a v2 `MigrationDevice`: the 32-byte register block
 * (struct vfio_device_migration_info), the data window after it, the save loop and the resume loop
 * (reference sections 1.1, 1.4, 1.5) and the device_state write rules (1.6, 1.7).
 *
 * Each accepted device_state value is carried out as its v2 state (device-state.ts's table:
 * 0/NDMA = STOP, RUNNING, RUNNING|NDMA = RUNNING_P2P, pre-copy = PRE_COPY, pre-copy|NDMA =
 * PRE_COPY_P2P, SAVING(|NDMA) = STOP_COPY, RESUMING(|NDMA) = RESUMING); the saving and resuming
 * data sessions of the v2 device back the two loops. A failed write reads back the previous value
 * when the device could be put back with the same session, else the error value 6 (the only two
 * outcomes v1 allows after a failed device_state write). The register and the v2 device always
 * agree: with 6 the device is in ERROR, whether validation failed on leaving RESUMING or the
 * previous state could not be restored (the region puts it there), so the next operation cannot
 * act on a state the register does not show.
 *
 * Sync vs async: `writeRegister` always returns a Promise (a device_state write may wait for the
 * device to quiesce; the other writes settle at once), and every write error is a rejection.
 * `readRegister`, `readData`, `writeData` and `reset` are synchronous. The user "may read or
 * write device_state at any time": while a device_state write is in flight, a read of
 * device_state returns the value before it (never a half-done transition), and another
 * device_state write waits its turn, as callers of the driver's state lock do. The other
 * registers and the data window fail with EBUSY meanwhile: their answers depend on the state
 * the write is still establishing.
 */
import { MigrationError } from "../../core/errors.js";
import { ResumingSession } from "../resuming-session.js";
import { SavingSession } from "../saving-session.js";
import { MigrationDevice, type MigrationDeviceOptions, type Session } from "../v2/migration-device.js";
import type { MigrationState } from "../v2/states.js";
import {
  classifyDeviceState,
  DEVICE_STATE_ERROR,
  DEVICE_STATE_RESET,
  DEVICE_STATE_RESUMING,
  DEVICE_STATE_SAVING,
  deviceStateName,
  validateDeviceStateWrite,
} from "./device-state.js";

/** Offset of device_state (u32, RW). */
export const REG_DEVICE_STATE = 0;
/** Offset of the reserved u32: reads 0, writes are ignored (1.1). */
export const REG_RESERVED = 4;
/** Offset of pending_bytes (u64, RO). */
export const REG_PENDING_BYTES = 8;
/** Offset of data_offset (u64, RO). */
export const REG_DATA_OFFSET = 16;
/** Offset of data_size (u64; written by the user only in RESUMING). */
export const REG_DATA_SIZE = 24;
/** Size of struct vfio_device_migration_info. */
export const REGISTER_BLOCK_SIZE = 32;
/**
 * Where the data window starts. Past the register block as 1.1 requires (so data_offset is never
 * 0), and page aligned as it must be if the window were mmapped; the gap is not accessible.
 */
export const DATA_WINDOW_OFFSET = 4096;
/** Default window size: QEMU's default migration data buffer (1 MiB). */
export const DEFAULT_WINDOW_SIZE = 1 << 20;

const FIELDS: ReadonlyMap<number, { readonly name: string; readonly width: 4 | 8 }> = new Map([
  [REG_DEVICE_STATE, { name: "device_state", width: 4 }],
  [REG_RESERVED, { name: "reserved", width: 4 }],
  [REG_PENDING_BYTES, { name: "pending_bytes", width: 8 }],
  [REG_DATA_OFFSET, { name: "data_offset", width: 8 }],
  [REG_DATA_SIZE, { name: "data_size", width: 8 }],
] as const);

const U64_MAX = (1n << 64n) - 1n;

/** Options of the region emulation. */
export interface MigrationRegionOptions {
  /** Advertise NDMA (VFIO_REGION_INFO_CAP_MIG_NDMA). Must equal the device's P2P feature; default: it. */
  ndma?: boolean;
  /** Bytes of the data window (1 to 1 GiB). Default 1 MiB. */
  windowSize?: number;
}

/**
 * Where the save iteration is (libvfio-user's pre-v2 sub-FSM, 4.2): `idle` until pending_bytes
 * reports data, `pending` once it did (a segment is waiting), `staged` once data_offset put the
 * segment in the window, `finished` when stop-and-copy reported 0 (the stream is complete).
 */
type SaveStep = "idle" | "pending" | "staged" | "finished";

function einval(message: string, state: number): MigrationError {
  return new MigrationError("EINVAL", message, { state: deviceStateName(state) });
}

/** The v1 migration region of one device. See the module comment for sync vs async. */
export class MigrationRegion {
  /** The v2 device this region drives; only the region should change its state. */
  readonly device: MigrationDevice;
  /** Whether this region advertises NDMA (bit 3 of device_state). */
  readonly ndma: boolean;
  /** Bytes of the data window. */
  readonly windowSize: number;
  readonly #window: Uint8Array;
  #deviceState = DEVICE_STATE_RESET;
  #busy = false;
  /** The tail of the queue of device_state writes, and how many are queued or in flight. */
  #turn: Promise<void> = Promise.resolve();
  #writes = 0;
  /** Bumped by reset(): a device_state write still awaiting must not land afterwards. */
  #resets = 0;
  #saveStep: SaveStep = "idle";
  /** Bytes of the segment in the window (save loop). */
  #staged = 0;
  /**
   * Data pending_bytes pulled from the saving session but not yet staged. It belongs to the
   * session's stream, not to one iteration: it survives device_state changes inside the saving
   * group and is dropped only when that session ends.
   */
  #carry: { readonly session: SavingSession; readonly bytes: Uint8Array } | undefined;
  /** data_offset was read since the last data_size write (resume loop, 1.5 a before c). */
  #resumeOffsetRead = false;
  #dataSize = 0n;

  /**
   * Creates a device with the features v1 implies (P2P = NDMA, PRE_COPY mandatory) and its
   * region. NDMA defaults to false here (it was never merged; a device must opt in).
   */
  static create(options: Omit<MigrationDeviceOptions, "features"> & MigrationRegionOptions): MigrationRegion {
    const ndma = options.ndma ?? false;
    const { windowSize } = options;
    const device = new MigrationDevice({ ...options, features: { p2p: ndma, precopy: true } });
    return new MigrationRegion(device, { ndma, ...(windowSize !== undefined ? { windowSize } : {}) });
  }

  /**
   * Wraps a device that is RUNNING with no session (v1's default state, 1.3). The device needs
   * PRE_COPY (v1 drivers must accept pre-copy) and P2P exactly when NDMA is advertised, so that
   * RUNNING|NDMA and RUNNING|SAVING|NDMA have their v2 states. Throws EINVAL otherwise.
   */
  constructor(device: MigrationDevice, options: MigrationRegionOptions = {}) {
    const ndma = options.ndma ?? device.features.p2p;
    const windowSize = options.windowSize ?? DEFAULT_WINDOW_SIZE;
    if (!device.features.precopy || device.features.p2p !== ndma) {
      throw new MigrationError("EINVAL", `a v1 region needs a device with PRE_COPY and P2P = NDMA (${String(ndma)})`);
    }
    if (device.state !== "RUNNING" || device.session !== undefined) {
      throw new MigrationError("EINVAL", `a v1 region starts with the device RUNNING, it is ${device.state}`, { state: device.state });
    }
    if (!Number.isInteger(windowSize) || windowSize < 1 || windowSize > 1 << 30) {
      throw new MigrationError("EINVAL", `window size must be 1 byte to 1 GiB, got ${String(windowSize)}`);
    }
    this.device = device;
    this.ndma = ndma;
    this.windowSize = windowSize;
    this.#window = new Uint8Array(windowSize);
  }

  /** The current device_state value (what a read of the register returns). */
  get deviceState(): number {
    return this.#deviceState;
  }

  /** Size of the whole region: register block, gap, data window. */
  get size(): number {
    return DATA_WINDOW_OFFSET + this.windowSize;
  }

  /** Reads a register at its native width: 4 gives a number, 8 a bigint. EINVAL otherwise. */
  readRegister(offset: number, width: 4): number;
  readRegister(offset: number, width: 8): bigint;
  readRegister(offset: number, width: number): number | bigint;
  readRegister(offset: number, width: number): number | bigint {
    const name = this.#field(offset, width);
    // device_state may be read at any time; the value before an in-flight write until it lands.
    if (name === "device_state") return this.#deviceState;
    this.#checkIdle();
    switch (name) {
      case "reserved":
        return 0;
      case "pending_bytes":
        return this.#readPendingBytes();
      case "data_offset":
        return this.#readDataOffset();
      default:
        return this.#readDataSize();
    }
  }

  /**
   * Writes a register at its native width (a number for 4 bytes, a bigint for 8). device_state
   * performs the transition; data_size in RESUMING feeds the window to the device; the reserved
   * word ignores writes; everything else is read-only (EINVAL).
   */
  writeRegister(offset: number, width: 4, value: number): Promise<void>;
  writeRegister(offset: number, width: 8, value: bigint): Promise<void>;
  writeRegister(offset: number, width: number, value: number | bigint): Promise<void>;
  async writeRegister(offset: number, width: number, value: number | bigint): Promise<void> {
    const name = this.#field(offset, width);
    const ok =
      width === 4
        ? typeof value === "number" && Number.isInteger(value) && value >= 0 && value <= 0xffffffff
        : typeof value === "bigint" && value >= 0n && value <= U64_MAX;
    if (!ok) throw einval(`${name} takes a u${width * 8}${width === 8 ? " bigint" : ""}, got ${String(value)}`, this.#deviceState);
    if (name === "device_state") return this.#queueDeviceState(value as number);
    this.#checkIdle();
    if (name === "reserved") return;
    if (name === "data_size" && this.#resuming()) return this.#writeDataSize(value as bigint);
    throw einval(`${name} is read-only${name === "data_size" ? " outside RESUMING" : ""}`, this.#deviceState);
  }

  /** Reads `length` bytes of the data window at region offset `offset` (a staged save segment, or what was written in RESUMING). */
  readData(offset: number, length: number): Uint8Array {
    this.#checkIdle();
    const at = this.#windowRange(offset, length);
    if (!this.#resuming() && !(this.#saving() && this.#saveStep === "staged")) {
      throw einval("the data window holds nothing to read: no segment is staged", this.#deviceState);
    }
    return this.#window.slice(at, at + length);
  }

  /** Writes bytes into the data window (RESUMING only); a later data_size write hands them to the device. */
  writeData(offset: number, bytes: Uint8Array): void {
    this.#checkIdle();
    if (!(bytes instanceof Uint8Array)) throw einval("data must be a Uint8Array", this.#deviceState);
    const at = this.#windowRange(offset, bytes.length);
    if (!this.#resuming()) throw einval("the data window is written only in RESUMING", this.#deviceState);
    this.#window.set(bytes, at);
  }

  /**
   * VFIO_DEVICE_RESET: back to RUNNING from any state, the error state included (1.6); any
   * session is abandoned (a resume in progress leaves the device content untouched).
   */
  reset(): void {
    // Not refused while a device_state write is pending: that write may wait forever on a
    // quiesce, and reset is the way out. The pending write then fails with ECANCELED.
    this.#resets++;
    this.#busy = false;
    this.#writes = 0;
    this.device.reset();
    this.#deviceState = DEVICE_STATE_RESET;
    this.#carry = undefined;
    this.#restartLoops();
  }

  // --- device_state ---------------------------------------------------------------------------

  /**
   * device_state writes take turns (the driver's state lock); each starts where the last left.
   * An idle region starts the write at once, so a reset right after it interrupts it.
   */
  #queueDeviceState(value: number): Promise<void> {
    const turn = this.#turn;
    const resets = this.#resets;
    this.#writes++;
    const result =
      this.#writes === 1
        ? this.#writeDeviceState(value)
        : turn.then(() => {
            // A reset while this write waited cancels it (it also forgot the queue).
            if (this.#resets !== resets) throw new MigrationError("ECANCELED", "device_state write cancelled by a reset before it started");
            return this.#writeDeviceState(value);
          });
    // reset() zeroes the count: writes from before it must not make the region look busy.
    const done = (): void => {
      if (this.#resets === resets) this.#writes--;
    };
    this.#turn = result.then(done, done);
    return result;
  }

  async #writeDeviceState(value: number): Promise<void> {
    const previous = this.#deviceState;
    // Refused writes change nothing (1.6); the rules, NDMA and reserved bits are in device-state.ts.
    validateDeviceStateWrite(previous, value, { ndma: this.ndma });
    const target = classifyDeviceState(value).v2 as MigrationState;
    const before = { state: this.device.state, session: this.device.session };
    const resets = this.#resets;
    this.#busy = true;
    try {
      // Quiesce before ending a pre-copy session: the kernel's path PRE_COPY -> RUNNING ->
      // RUNNING_P2P ends the session first, so a quiesce timeout there would leave a state that
      // can only be restored with a new stream. PRE_COPY_P2P -> RUNNING_P2P is an equally short
      // legal path; it is Alex Williamson's "clear RUNNING first" order (1.6), failing early.
      if (this.ndma && before.state === "PRE_COPY" && (target === "STOP" || target === "RUNNING_P2P" || target === "RESUMING")) {
        await this.device.setState("PRE_COPY_P2P");
      }
      // stop-and-copy -> pre-copy: v2 blocks STOP_COPY -> PRE_COPY*, but v1 accepts any write
      // between valid states. Setting pre-copy from stop-and-copy starts a new save: the old
      // stream ends (through STOP) and PRE_COPY opens a new session.
      if (before.state === "STOP_COPY" && (target === "PRE_COPY" || target === "PRE_COPY_P2P")) {
        await this.device.setState("STOP");
      }
      await this.device.setState(target);
      if (this.#resets !== resets) throw new MigrationError("ECANCELED", "device_state write interrupted by a reset");
      this.#deviceState = value;
      this.#restartLoops();
    } catch (error) {
      // A reset while the write was pending: RUNNING stands, nothing of the write lands.
      if (this.#resets !== resets) throw this.#failure(error, previous, value);
      this.#deviceState = await this.#recover(previous, before);
      if (this.#deviceState === DEVICE_STATE_ERROR) {
        // The device may stand in a valid v2 state (say STOP, after RESUMING's data was loaded
        // and the save failed): the register says error, so the device must be in ERROR too.
        if (this.device.state !== "ERROR") this.device.enterError();
        this.#restartLoops();
      }
      throw this.#failure(error, previous, value);
    } finally {
      if (this.#resets === resets) this.#busy = false;
    }
  }

  /**
   * After a failed transition: the previous device_state if the device can be put back exactly
   * (same state and same data session), else the error state (1.6), which only reset leaves.
   * A failed exit from RESUMING left the device in ERROR already (v2 validation point).
   */
  async #recover(previous: number, before: { state: MigrationState; session: Session | undefined }): Promise<number> {
    const device = this.device;
    if (device.state === "ERROR") return DEVICE_STATE_ERROR;
    // A session the previous state owned must survive: a fresh one would restart a stream the
    // user is part way through, which is not "the previous state".
    if (before.session !== undefined && device.session !== before.session) return DEVICE_STATE_ERROR;
    if (device.state !== before.state) {
      try {
        await device.setState(before.state);
      } catch {
        return DEVICE_STATE_ERROR;
      }
      if (device.session !== before.session) return DEVICE_STATE_ERROR;
    }
    return previous;
  }

  #failure(error: unknown, previous: number, requested: number): MigrationError {
    const base = error instanceof MigrationError ? error : new MigrationError("EIO", `device_state write failed: ${String(error)}`, { cause: error });
    const now = deviceStateName(this.#deviceState);
    return new MigrationError(
      base.code,
      `device_state ${deviceStateName(previous)} -> ${deviceStateName(requested)} failed: ${base.message}; device_state is ${now}`,
      {
        from: deviceStateName(previous),
        to: deviceStateName(requested),
        state: now,
        cause: base,
        ...(base.recordIndex !== undefined ? { recordIndex: base.recordIndex } : {}),
        ...(base.byteOffset !== undefined ? { byteOffset: base.byteOffset } : {}),
      },
    );
  }

  /** Any device_state change restarts both loops (4.2); the carried data stays with its session. */
  #restartLoops(): void {
    this.#saveStep = "idle";
    this.#staged = 0;
    this.#resumeOffsetRead = false;
    this.#dataSize = 0n;
  }

  // --- save loop (1.4) ------------------------------------------------------------------------

  #readPendingBytes(): bigint {
    const session = this.#savingSession("pending_bytes");
    if (this.#saveStep === "finished") return 0n;
    // Reading pending_bytes after a staged segment says it was consumed (1.4 f).
    if (this.#saveStep === "staged") this.#staged = 0;
    if (this.#carry?.session !== session) this.#carry = undefined;
    if (this.#carry === undefined) {
      // Pulling the next segment now makes 0 exact: null is the end of the stream (stop-and-copy
      // done), ENOMSG is pre-copy's "nothing for now" (v2's temporary end of stream).
      let bytes: Uint8Array | null;
      try {
        bytes = session.read(this.windowSize);
      } catch (error) {
        if (!(error instanceof MigrationError && error.code === "ENOMSG")) throw error;
        this.#saveStep = "idle";
        return 0n;
      }
      if (bytes === null) {
        this.#saveStep = "finished";
        return 0n;
      }
      this.#carry = { session, bytes };
    }
    this.#saveStep = "pending";
    // Only zero vs non-zero is meaningful (RFC); the rest is the session's own estimate.
    return BigInt(this.#carry.bytes.length + session.pendingBytes());
  }

  #readDataOffset(): bigint {
    if (this.#resuming()) {
      this.#resumeOffsetRead = true;
      return BigInt(DATA_WINDOW_OFFSET);
    }
    this.#savingSession("data_offset");
    if (this.#saveStep === "pending" && this.#carry !== undefined) {
      // Staging commits the user to collect this segment (RFC wording of 1.4 b).
      this.#window.set(this.#carry.bytes);
      this.#staged = this.#carry.bytes.length;
      this.#carry = undefined;
      this.#saveStep = "staged";
    } else if (this.#saveStep !== "staged") {
      throw einval("data_offset read out of sequence: read pending_bytes first (and it must be non-zero)", this.#deviceState);
    }
    return BigInt(DATA_WINDOW_OFFSET);
  }

  #readDataSize(): bigint {
    if (this.#resuming()) return this.#dataSize;
    this.#savingSession("data_size");
    if (this.#saveStep !== "staged") throw einval("data_size read out of sequence: read data_offset first", this.#deviceState);
    return BigInt(this.#staged);
  }

  #savingSession(register: string): SavingSession {
    const session = this.device.session;
    if (!this.#saving() || !(session instanceof SavingSession)) {
      throw einval(`${register} is defined only while SAVING or RESUMING (and pending_bytes only while SAVING)`, this.#deviceState);
    }
    return session;
  }

  // --- resume loop (1.5) ----------------------------------------------------------------------

  #writeDataSize(size: bigint): void {
    if (!this.#resumeOffsetRead) throw einval("data_size written out of sequence: read data_offset first", this.#deviceState);
    if (size > BigInt(this.windowSize)) throw einval(`data_size ${size} exceeds the ${this.windowSize}-byte data window`, this.#deviceState);
    const session = this.device.session;
    if (!(session instanceof ResumingSession)) throw einval("no resuming session", this.#deviceState);
    // Each write is one iteration (1.5 c), whatever its outcome: the next needs data_offset again.
    this.#resumeOffsetRead = false;
    // A copy: the user may overwrite the window as soon as this write returns.
    session.write(this.#window.slice(0, Number(size)));
    this.#dataSize = size;
  }

  // --- helpers --------------------------------------------------------------------------------

  #saving(): boolean {
    const s = this.#deviceState;
    return s !== DEVICE_STATE_ERROR && (s & DEVICE_STATE_SAVING) !== 0;
  }

  #resuming(): boolean {
    const s = this.#deviceState;
    return s !== DEVICE_STATE_ERROR && (s & DEVICE_STATE_RESUMING) !== 0;
  }

  #checkIdle(): void {
    if (this.#busy || this.#writes > 0) {
      throw new MigrationError("EBUSY", "a device_state write is in progress", { state: deviceStateName(this.#deviceState) });
    }
  }

  /** The register at `offset`, if accessed at its native width and alignment (1.1); else EINVAL. */
  #field(offset: number, width: number): string {
    const field = FIELDS.get(offset);
    if (field === undefined || field.width !== width) {
      const at = Number.isInteger(offset) ? `0x${offset.toString(16)}` : String(offset);
      throw einval(`no ${String(width)}-byte register at ${at}: accesses must match a field's offset and width`, this.#deviceState);
    }
    return field.name;
  }

  /** Window index of [offset, offset + length), which must lie inside the data window. */
  #windowRange(offset: number, length: number): number {
    const at = offset - DATA_WINDOW_OFFSET;
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || length < 0 || at < 0 || at + length > this.windowSize) {
      throw einval(`[${String(offset)}, +${String(length)}) is outside the data window [${DATA_WINDOW_OFFSET}, ${this.size})`, this.#deviceState);
    }
    return at;
  }
}
