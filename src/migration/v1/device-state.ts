/**
 * The device_state register of the VFIO migration uAPI v1 (the migration region, Linux 5.8 to
 * 5.17) plus the NDMA bit of the December 2021 RFC ("vfio: Update/Clarify migration uAPI, add
 * NDMA state", never merged; it became v2's RUNNING_P2P).
 *
 * Pure logic: what each of the 16 low-bit values means and which writes the register accepts.
 */
import { MigrationError } from "../../core/errors.js";
import type { MigrationState } from "../v2/states.js";

/** VFIO_DEVICE_STATE_RUNNING: the device runs (the default and post-reset state). */
export const DEVICE_STATE_RUNNING = 1;
/** VFIO_DEVICE_STATE_SAVING: state can be read out (pre-copy with RUNNING, stop-and-copy without). */
export const DEVICE_STATE_SAVING = 2;
/** VFIO_DEVICE_STATE_RESUMING: state is being written in. */
export const DEVICE_STATE_RESUMING = 4;
/** VFIO_DEVICE_STATE_NDMA (RFC): no new DMA; only meaningful with RUNNING. Optional. */
export const DEVICE_STATE_NDMA = 8;
/** Bits no revision defines; a write setting any of them is refused. */
export const DEVICE_STATE_RESERVED_MASK = 0xfffffff0;
/** The value the register reports for the error state (SAVING|RESUMING, the RFC's _ERROR). */
export const DEVICE_STATE_ERROR = DEVICE_STATE_SAVING | DEVICE_STATE_RESUMING;
/** The state after VFIO_DEVICE_RESET. */
export const DEVICE_STATE_RESET = DEVICE_STATE_RUNNING;

/** What one value of the low four bits means. */
export interface DeviceStateRow {
  /** Kernel-style name built from the bits ("_STOP" when none is set). */
  readonly name: string;
  /** Short description of the state. */
  readonly meaning: string;
  /** VFIO_DEVICE_STATE_VALID: identical under the v1 (mask 0x7) and RFC (mask 0xF) macros. */
  readonly valid: boolean;
  /** The RFC's VFIO_DEVICE_STATE_IS_ERROR ((s & 0xF) == SAVING|RESUMING): only 0x6. */
  readonly isError: boolean;
  /** The v1 VFIO_DEVICE_STATE_IS_ERROR ((s & 0x7) == SAVING|RESUMING): 0x6 and 0xE. */
  readonly v1IsError: boolean;
  /** The v2 state that behaves the same, if any. */
  readonly v2: MigrationState | undefined;
}

const R = DEVICE_STATE_RUNNING;
const S = DEVICE_STATE_SAVING;
const Re = DEVICE_STATE_RESUMING;
const N = DEVICE_STATE_NDMA;

function row(name: string, meaning: string, valid: boolean, isError: boolean, v1IsError: boolean, v2: MigrationState | undefined): DeviceStateRow {
  return { name, meaning, valid, isError, v1IsError, v2 };
}

/**
 * The 16 combinations of NDMA|RESUMING|SAVING|RUNNING, indexed by value. VALID rejects exactly
 * RESUMING together with SAVING or RUNNING; IS_ERROR differs between the macro sets only at 0xE.
 */
export const DEVICE_STATE_TABLE: readonly DeviceStateRow[] = [
  // 0x0: stopped, neither saving nor resuming; where a save ends.
  row("_STOP", "stop", true, false, false, "STOP"),
  // 0x1: the default state after open and after reset.
  row("_RUNNING", "running", true, false, false, "RUNNING"),
  // 0x2: stop-and-copy: stopped, the rest of the state is read out.
  row("_SAVING", "stop-and-copy", true, false, false, "STOP_COPY"),
  // 0x3: pre-copy: running while state is read out (optional in v2, mandatory in v1).
  row("_RUNNING|_SAVING", "pre-copy", true, false, false, "PRE_COPY"),
  // 0x4: stopped and accepting migration data.
  row("_RESUMING", "resuming", true, false, false, "RESUMING"),
  // 0x5: RESUMING with RUNNING: invalid in v1, unsupported by the RFC.
  row("_RUNNING|_RESUMING", "invalid: resuming while running", false, false, false, undefined),
  // 0x6: SAVING|RESUMING: the error state; cannot be written, left only by reset.
  row("_ERROR", "error (saving and resuming)", false, true, true, "ERROR"),
  // 0x7: all three base bits: invalid.
  row("_RUNNING|_SAVING|_RESUMING", "invalid: saving and resuming", false, false, false, undefined),
  // 0x8: NDMA without RUNNING: superfluous (a stopped device does no DMA), behaves as STOP.
  row("_NDMA", "stop (NDMA superfluous)", true, false, false, "STOP"),
  // 0x9: running with no new DMA; outstanding DMA completes before the write returns.
  row("_RUNNING|_NDMA", "running without DMA", true, false, false, "RUNNING_P2P"),
  // 0xA: stop-and-copy, NDMA superfluous.
  row("_SAVING|_NDMA", "stop-and-copy (NDMA superfluous)", true, false, false, "STOP_COPY"),
  // 0xB: pre-copy with DMA quiesced (Jason Gunthorpe's PRECOPY_NDMA).
  row("_RUNNING|_SAVING|_NDMA", "pre-copy without DMA", true, false, false, "PRE_COPY_P2P"),
  // 0xC: resuming, NDMA superfluous.
  row("_RESUMING|_NDMA", "resuming (NDMA superfluous)", true, false, false, "RESUMING"),
  // 0xD: RESUMING with RUNNING: invalid.
  row("_RUNNING|_RESUMING|_NDMA", "invalid: resuming while running", false, false, false, undefined),
  // 0xE: SAVING|RESUMING|NDMA: invalid; the v1 macro (mask 0x7) would call it ERROR, the RFC not.
  row("_SAVING|_RESUMING|_NDMA", "invalid: saving and resuming", false, false, true, undefined),
  // 0xF: every bit: invalid.
  row("_RUNNING|_SAVING|_RESUMING|_NDMA", "invalid: saving and resuming", false, false, false, undefined),
];

/** A register value, classified. */
export interface DeviceStateInfo extends DeviceStateRow {
  /** The value as an unsigned 32-bit number. */
  readonly value: number;
  /** The bits covered by the table (value & 0xF). */
  readonly bits: number;
  /** Reserved bits that are set (value & 0xFFFFFFF0); any makes the value invalid. */
  readonly reserved: number;
  /** True if the NDMA bit is set (only a device that supports NDMA accepts it). */
  readonly ndma: boolean;
}

function tableRow(bits: number): DeviceStateRow {
  const r = DEVICE_STATE_TABLE[bits & 0xf];
  if (r === undefined) throw new Error("unreachable: 16-row table");
  return r;
}

function isU32(value: number): boolean {
  return Number.isInteger(value) && value >= 0 && value <= 0xffffffff;
}

/**
 * Classifies a device_state value: its row of the table, plus reserved bits. Throws EINVAL for
 * anything that is not a u32 (the register is 32 bits wide; NaN must not read as _STOP).
 */
export function classifyDeviceState(value: number): DeviceStateInfo {
  if (!isU32(value)) {
    throw new MigrationError("EINVAL", `device_state must be a u32, got ${String(value)}`);
  }
  const v = value;
  const bits = v & 0xf;
  const reserved = (v & DEVICE_STATE_RESERVED_MASK) >>> 0;
  const r = tableRow(bits);
  return {
    ...r,
    // Reserved bits make any value invalid; a value only "is" the error state when it is exactly
    // the encoding the register reports.
    valid: r.valid && reserved === 0,
    isError: r.isError && reserved === 0,
    value: v,
    bits,
    reserved,
    ndma: (bits & N) !== 0,
  };
}

/** Kernel-style name of a device_state value, e.g. "_RUNNING|_SAVING" or "_STOP|reserved(0x10)". */
export function deviceStateName(value: number): string {
  if (!isU32(value)) return `invalid(${String(value)})`;
  const v = value;
  const reserved = (v & DEVICE_STATE_RESERVED_MASK) >>> 0;
  const name = tableRow(v).name;
  return reserved === 0 ? name : `${name}|reserved(0x${reserved.toString(16)})`;
}

/**
 * Writes between (NDMA-stripped) valid states the register accepts, keyed by current state:
 * every valid state from every valid state. The NDMA RFC says "Migration drivers should attempt
 * to support any transition between valid states", and the v1 header's flows (pre-copy from
 * STOP, stop-and-copy abandoned for RESUMING, a resume abandoned for a save) need exactly the
 * writes libvfio-user's pre-v2 table refused: STOP -> pre-copy, stop-and-copy -> pre-copy and
 * -> RESUMING, pre-copy -> RESUMING, RESUMING -> stop-and-copy and -> pre-copy (and their NDMA
 * variants). MigrationRegion carries each out through the v2 states (stop-and-copy -> pre-copy,
 * which v2 blocks, as a new save through STOP). Writing the error encoding stays refused
 * (VALID says no) although libvfio-user accepts it; leaving the error state needs a reset.
 */
const ALLOWED_WRITES: Readonly<Record<number, readonly number[]>> = {
  [0]: [0, R, S, R | S, Re],
  [R]: [0, R, S, R | S, Re],
  [S]: [0, R, S, R | S, Re],
  [R | S]: [0, R, S, R | S, Re],
  [Re]: [0, R, S, R | S, Re],
};

/** Options of the register emulation. */
export interface DeviceStateWriteOptions {
  /** The device supports NDMA (VFIO_REGION_INFO_CAP_MIG_NDMA); otherwise bit 3 is reserved. */
  readonly ndma: boolean;
}

/**
 * The transition-relevant part of a valid state: NDMA only matters with RUNNING (with !RUNNING it
 * is superfluous), and toggling it never changes which writes are allowed, so it is dropped.
 */
function baseState(bits: number): number {
  return bits & (R | S | Re);
}

function writeError(current: number, requested: number, why: string): MigrationError {
  const from = deviceStateName(current);
  const to = deviceStateName(requested);
  return new MigrationError("EINVAL", `device_state write ${to} refused in ${from}: ${why}`, {
    from,
    to,
    state: from,
  });
}

/**
 * Checks a write of `requested` to device_state while the register holds `current`. Returns
 * nothing if the write is accepted; throws EINVAL (with both state names) if it is refused, in
 * which case the register keeps `current` (uAPI v1: a failed write leaves the previous state).
 *
 * Refused: reserved bits; NDMA when the device lacks it; invalid combinations (including the
 * error encoding itself); any write while in the error state (only VFIO_DEVICE_RESET leaves it);
 * transitions outside the allowed table. Same-value writes of a valid state are accepted.
 */
export function validateDeviceStateWrite(current: number, requested: number, options: DeviceStateWriteOptions): void {
  if (!isU32(current) || !isU32(requested)) {
    throw writeError(current, requested, "device_state is a 32-bit register");
  }
  const cur = classifyDeviceState(current);
  const req = classifyDeviceState(requested);
  const unsupportedNdma = (info: DeviceStateInfo): boolean => info.ndma && !options.ndma;
  if (cur.isError) {
    throw writeError(current, requested, "the device is in the error state; only a device reset leaves it");
  }
  if (!cur.valid || unsupportedNdma(cur)) {
    throw writeError(current, requested, "the current value is not a state this register can hold");
  }
  if (req.reserved !== 0) {
    throw writeError(current, requested, `reserved bits 0x${req.reserved.toString(16)} are set`);
  }
  if (unsupportedNdma(req)) {
    throw writeError(current, requested, "the device does not support NDMA (bit 3 is reserved)");
  }
  if (!req.valid) {
    throw writeError(current, requested, `${req.meaning} is not a valid state`);
  }
  if (req.bits === cur.bits) return;
  const allowed = ALLOWED_WRITES[baseState(cur.bits)];
  if (allowed === undefined || !allowed.includes(baseState(req.bits))) {
    throw writeError(current, requested, `${cur.meaning} -> ${req.meaning} is not a permitted transition`);
  }
}

/** Boolean form of `validateDeviceStateWrite`. */
export function isDeviceStateWriteAllowed(current: number, requested: number, options: DeviceStateWriteOptions): boolean {
  try {
    validateDeviceStateWrite(current, requested, options);
    return true;
  } catch (e) {
    if (e instanceof MigrationError) return false;
    throw e;
  }
}
