/**
 * VFIO migration uAPI v2 (Linux 5.18+, PRE_COPY since 6.2): the device states, which optional
 * features make them available, the direct FSM arcs with their effect on the data session, and
 * the kernel's next-step rule for combination transitions (vfio_mig_get_next_state()).
 *
 * Pure logic: no device, no data path. The device layer walks `nextState` and executes each
 * returned arc with the session effect `arcEffect` reports.
 */
import { MigrationError } from "../../core/errors.js";

/** The states of enum vfio_device_mig_state (include/uapi/linux/vfio.h). */
export type MigrationState = "ERROR" | "STOP" | "RUNNING" | "STOP_COPY" | "RESUMING" | "RUNNING_P2P" | "PRE_COPY" | "PRE_COPY_P2P";

/** All states, in the kernel's numeric order (index = VFIO_DEVICE_STATE_* value). */
export const MIGRATION_STATES: readonly MigrationState[] = ["ERROR", "STOP", "RUNNING", "STOP_COPY", "RESUMING", "RUNNING_P2P", "PRE_COPY", "PRE_COPY_P2P"];

/** The kernel's numeric value of every state (VFIO_DEVICE_STATE_*; VFIO_DEVICE_STATE_NR = 8). */
export const MIGRATION_STATE_NUMBERS: Readonly<Record<MigrationState, number>> = {
  ERROR: 0,
  STOP: 1,
  RUNNING: 2,
  STOP_COPY: 3,
  RESUMING: 4,
  RUNNING_P2P: 5,
  PRE_COPY: 6,
  PRE_COPY_P2P: 7,
};

/** True if `value` names a migration state (for values arriving from untyped callers). */
export function isMigrationState(value: unknown): value is MigrationState {
  return typeof value === "string" && Object.hasOwn(MIGRATION_STATE_NUMBERS, value);
}

/** The kernel's number for `state`. */
export function stateToNumber(state: MigrationState): number {
  return MIGRATION_STATE_NUMBERS[state];
}

/**
 * The state with kernel number `value`. Anything outside 0..7 is refused with EINVAL, as the
 * kernel refuses `new_fsm >= ARRAY_SIZE(vfio_from_fsm_table)`.
 */
export function stateFromNumber(value: number): MigrationState {
  const state = Number.isInteger(value) ? MIGRATION_STATES[value] : undefined;
  if (state === undefined) {
    throw new MigrationError("EINVAL", `${String(value)} is not a migration state number (0..7)`);
  }
  return state;
}

/**
 * Optional migration features of a device (VFIO_DEVICE_FEATURE_MIGRATION). STOP_COPY is always
 * present; PRE_COPY_P2P exists only with both P2P and PRE_COPY.
 */
export interface MigrationFeatures {
  /** VFIO_MIGRATION_P2P: RUNNING_P2P (and, with precopy, PRE_COPY_P2P). */
  p2p?: boolean;
  /** VFIO_MIGRATION_PRE_COPY: PRE_COPY (and, with p2p, PRE_COPY_P2P). */
  precopy?: boolean;
}

/** VFIO_MIGRATION_STOP_COPY. */
export const VFIO_MIGRATION_STOP_COPY = 1;
/** VFIO_MIGRATION_P2P. */
export const VFIO_MIGRATION_P2P = 2;
/** VFIO_MIGRATION_PRE_COPY. */
export const VFIO_MIGRATION_PRE_COPY = 4;

/** The VFIO_MIGRATION_* flag word a device with `features` reports. */
export function migrationFlags(features: MigrationFeatures): number {
  return VFIO_MIGRATION_STOP_COPY | (features.p2p === true ? VFIO_MIGRATION_P2P : 0) | (features.precopy === true ? VFIO_MIGRATION_PRE_COPY : 0);
}

/**
 * The flags each state needs (state_flags_table in vfio_mig_get_next_state()). ERROR needs ~0U so
 * that no device ever "supports" it: it can be neither requested nor walked through.
 */
const STATE_FLAGS: Readonly<Record<MigrationState, number>> = {
  ERROR: 0xffffffff,
  STOP: VFIO_MIGRATION_STOP_COPY,
  RUNNING: VFIO_MIGRATION_STOP_COPY,
  STOP_COPY: VFIO_MIGRATION_STOP_COPY,
  RESUMING: VFIO_MIGRATION_STOP_COPY,
  RUNNING_P2P: VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P,
  PRE_COPY: VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_PRE_COPY,
  PRE_COPY_P2P: VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY,
};

function supportedByFlags(state: MigrationState, flags: number): boolean {
  const need = STATE_FLAGS[state];
  return (need & flags) >>> 0 === need >>> 0;
}

/**
 * True if a device with `features` can be put in `state` with SET_STATE. ERROR never is: it is
 * entered only by a failed transition and left only by VFIO_DEVICE_RESET.
 */
export function stateSupported(state: MigrationState, features: MigrationFeatures): boolean {
  return supportedByFlags(state, migrationFlags(features));
}

/** The saving group: states that share one saving data session. */
export function isSavingState(state: MigrationState): boolean {
  return state === "STOP_COPY" || state === "PRE_COPY" || state === "PRE_COPY_P2P";
}

/**
 * What a direct arc does to the migration data session:
 * - `open-saving`: starts a saving session (SET_STATE returns a new data_fd to read);
 * - `continue-saving`: moves inside the saving group; the open session carries on;
 * - `open-resuming`: starts a resuming session (a new data_fd to write);
 * - `close`: terminates the session (leaving RESUMING is also the validation point);
 * - `none`: no session is involved.
 */
export type ArcEffect = "open-saving" | "continue-saving" | "open-resuming" | "close" | "none";

/** One direct arc out of a state. */
export interface ArcSpec {
  readonly effect: ArcEffect;
  /**
   * The arc exists only when P2P is not supported: it is what the driver sees when the kernel's
   * skip loop jumps over an unsupported RUNNING_P2P / PRE_COPY_P2P (vfio_mig_get_next_state's
   * "without P2P the driver must implement" arcs). With P2P the two-arc path is used instead.
   */
  readonly withoutP2pOnly?: true;
}

/**
 * The direct arcs, keyed by source state (like libvfio-user's transition table). The unmarked
 * arcs are exactly the arc list of include/uapi/linux/vfio.h; their session effects follow the
 * header: RUNNING -> PRE_COPY, RUNNING_P2P -> PRE_COPY_P2P and STOP -> STOP_COPY return a saving
 * data_fd; STOP -> RESUMING returns a resuming data_fd; the arcs out of STOP_COPY, RESUMING,
 * PRE_COPY (to RUNNING) and PRE_COPY_P2P (to RUNNING_P2P) terminate the session; moves inside the
 * saving group keep it. STOP_COPY -> PRE_COPY* is deliberately absent (the header forbids it).
 * An arc is usable by a device only when both of its states are supported (stateSupported).
 */
export const MIGRATION_ARCS: Readonly<Record<MigrationState, Readonly<Partial<Record<MigrationState, ArcSpec>>>>> = {
  ERROR: {},
  STOP: {
    RUNNING_P2P: { effect: "none" },
    STOP_COPY: { effect: "open-saving" },
    RESUMING: { effect: "open-resuming" },
    RUNNING: { effect: "none", withoutP2pOnly: true },
  },
  RUNNING: {
    RUNNING_P2P: { effect: "none" },
    PRE_COPY: { effect: "open-saving" },
    STOP: { effect: "none", withoutP2pOnly: true },
  },
  STOP_COPY: {
    STOP: { effect: "close" },
  },
  RESUMING: {
    STOP: { effect: "close" },
  },
  RUNNING_P2P: {
    STOP: { effect: "none" },
    RUNNING: { effect: "none" },
    PRE_COPY_P2P: { effect: "open-saving" },
  },
  PRE_COPY: {
    RUNNING: { effect: "close" },
    PRE_COPY_P2P: { effect: "continue-saving" },
    STOP_COPY: { effect: "continue-saving", withoutP2pOnly: true },
  },
  PRE_COPY_P2P: {
    PRE_COPY: { effect: "continue-saving" },
    RUNNING_P2P: { effect: "close" },
    STOP_COPY: { effect: "continue-saving" },
  },
};

/** The table entry for `from -> to`, guarding against untyped callers and prototype keys. */
function arcSpec(from: MigrationState, to: MigrationState): ArcSpec | undefined {
  if (!isMigrationState(from) || !isMigrationState(to)) return undefined;
  const row = MIGRATION_ARCS[from];
  return Object.hasOwn(row, to) ? row[to] : undefined;
}

/** True if `from -> to` is a single arc a device with `features` executes. */
export function isDirectArc(from: MigrationState, to: MigrationState, features: MigrationFeatures): boolean {
  const spec = arcSpec(from, to);
  if (spec === undefined) return false;
  if (spec.withoutP2pOnly === true && features.p2p === true) return false;
  return stateSupported(from, features) && stateSupported(to, features);
}

/** The direct arcs out of `from` for a device with `features`. */
export function directArcsFrom(from: MigrationState, features: MigrationFeatures): MigrationState[] {
  return MIGRATION_STATES.filter((to) => isDirectArc(from, to, features));
}

/**
 * The session effect of the direct arc `from -> to` (any feature set). Throws EINVAL if it is
 * not a direct arc: combination transitions must be split with `nextState` first.
 */
export function arcEffect(from: MigrationState, to: MigrationState): ArcEffect {
  const spec = arcSpec(from, to);
  if (spec === undefined) {
    throw new MigrationError("EINVAL", `${String(from)} -> ${String(to)} is not a direct migration arc`, {
      from: String(from),
      to: String(to),
      state: String(from),
    });
  }
  return spec.effect;
}

type FsmRow = Readonly<Record<MigrationState, MigrationState>>;

/**
 * vfio_from_fsm_table, cell by cell: [from][to] = the next step assuming every optional state is
 * supported. ERROR cells mean "refused". Unsupported steps are skipped in `nextState`.
 */
const FSM_TABLE: Readonly<Record<MigrationState, FsmRow>> = {
  STOP: {
    STOP: "STOP",
    RUNNING: "RUNNING_P2P",
    PRE_COPY: "RUNNING_P2P",
    PRE_COPY_P2P: "RUNNING_P2P",
    STOP_COPY: "STOP_COPY",
    RESUMING: "RESUMING",
    RUNNING_P2P: "RUNNING_P2P",
    ERROR: "ERROR",
  },
  RUNNING: {
    STOP: "RUNNING_P2P",
    RUNNING: "RUNNING",
    PRE_COPY: "PRE_COPY",
    PRE_COPY_P2P: "RUNNING_P2P",
    STOP_COPY: "RUNNING_P2P",
    RESUMING: "RUNNING_P2P",
    RUNNING_P2P: "RUNNING_P2P",
    ERROR: "ERROR",
  },
  PRE_COPY: {
    STOP: "RUNNING",
    RUNNING: "RUNNING",
    PRE_COPY: "PRE_COPY",
    PRE_COPY_P2P: "PRE_COPY_P2P",
    STOP_COPY: "PRE_COPY_P2P",
    RESUMING: "RUNNING",
    RUNNING_P2P: "RUNNING",
    ERROR: "ERROR",
  },
  PRE_COPY_P2P: {
    STOP: "RUNNING_P2P",
    RUNNING: "RUNNING_P2P",
    PRE_COPY: "PRE_COPY",
    PRE_COPY_P2P: "PRE_COPY_P2P",
    STOP_COPY: "STOP_COPY",
    RESUMING: "RUNNING_P2P",
    RUNNING_P2P: "RUNNING_P2P",
    ERROR: "ERROR",
  },
  STOP_COPY: {
    STOP: "STOP",
    RUNNING: "STOP",
    PRE_COPY: "ERROR",
    PRE_COPY_P2P: "ERROR",
    STOP_COPY: "STOP_COPY",
    RESUMING: "STOP",
    RUNNING_P2P: "STOP",
    ERROR: "ERROR",
  },
  RESUMING: {
    STOP: "STOP",
    RUNNING: "STOP",
    PRE_COPY: "STOP",
    PRE_COPY_P2P: "STOP",
    STOP_COPY: "STOP",
    RESUMING: "RESUMING",
    RUNNING_P2P: "STOP",
    ERROR: "ERROR",
  },
  RUNNING_P2P: {
    STOP: "STOP",
    RUNNING: "RUNNING",
    PRE_COPY: "RUNNING",
    PRE_COPY_P2P: "PRE_COPY_P2P",
    STOP_COPY: "STOP",
    RESUMING: "STOP",
    RUNNING_P2P: "RUNNING_P2P",
    ERROR: "ERROR",
  },
  ERROR: {
    STOP: "ERROR",
    RUNNING: "ERROR",
    PRE_COPY: "ERROR",
    PRE_COPY_P2P: "ERROR",
    STOP_COPY: "ERROR",
    RESUMING: "ERROR",
    RUNNING_P2P: "ERROR",
    ERROR: "ERROR",
  },
};

function describeFeatures(features: MigrationFeatures): string {
  const names = ["STOP_COPY"];
  if (features.p2p === true) names.push("P2P");
  if (features.precopy === true) names.push("PRE_COPY");
  return names.join("|");
}

function refuse(from: string, to: string, why: string): MigrationError {
  return new MigrationError("EINVAL", `cannot move from ${from} to ${to}: ${why}`, {
    from,
    to,
    state: from,
  });
}

/**
 * The next single arc from `from` toward `to`, as vfio_mig_get_next_state() computes it for a
 * device with `features`. `nextState(s, s)` is `s`. Throws EINVAL where the kernel refuses: ERROR
 * as source (only a reset leaves it) or target (never requestable), a state the device does not
 * support, and the blocked STOP_COPY -> PRE_COPY / PRE_COPY_P2P.
 */
export function nextState(from: MigrationState, to: MigrationState, features: MigrationFeatures): MigrationState {
  if (!isMigrationState(from) || !isMigrationState(to)) {
    throw refuse(String(from), String(to), "not a migration state");
  }
  const flags = migrationFlags(features);
  if (from === "ERROR") {
    throw refuse(from, to, "the device is in ERROR and only a device reset leaves it");
  }
  if (!supportedByFlags(from, flags)) {
    throw refuse(from, to, `${from} is not supported by a device with ${describeFeatures(features)}`);
  }
  if (to === "ERROR") {
    throw refuse(from, to, "ERROR can never be requested");
  }
  if (!supportedByFlags(to, flags)) {
    throw refuse(from, to, `${to} is not supported by a device with ${describeFeatures(features)}`);
  }
  // The kernel's skip loop: an unsupported optional step is replaced by that step's own next
  // step toward the target. It must stop at ERROR: the kernel (6.2 until the "prevent infinite
  // loop in vfio_mig_get_next_state() on blocked arc" fix) kept looping there, because ERROR is
  // never supported and its row maps to ERROR. The bound is a second guard against a bad table.
  let next = FSM_TABLE[from][to];
  for (let hops = 0; next !== "ERROR" && !supportedByFlags(next, flags); hops++) {
    if (hops >= MIGRATION_STATES.length) throw refuse(from, to, "no path (internal table error)");
    next = FSM_TABLE[next][to];
  }
  if (next === "ERROR") {
    throw refuse(from, to, "the arc is blocked (STOP_COPY cannot go back to PRE_COPY states)");
  }
  return next;
}

/**
 * Every arc a SET_STATE from `from` to `to` executes, in order (the intermediate states and
 * `to`); empty when `from === to`. Throws like `nextState`.
 */
export function migrationPath(from: MigrationState, to: MigrationState, features: MigrationFeatures): MigrationState[] {
  const path: MigrationState[] = [];
  let cur = from;
  // nextState(s, s) validates s, so a same-state request on an unsupported state still throws.
  let next = nextState(cur, to, features);
  while (cur !== to) {
    path.push(next);
    if (path.length > MIGRATION_STATES.length) throw refuse(from, to, "no path (internal table error)");
    cur = next;
    if (cur !== to) next = nextState(cur, to, features);
  }
  return path;
}
