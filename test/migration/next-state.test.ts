import { fc, test } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import { MigrationError } from "../../src/core/errors.js";
import {
  arcEffect,
  directArcsFrom,
  isDirectArc,
  isSavingState,
  MIGRATION_STATES,
  migrationFlags,
  migrationPath,
  nextState,
  stateFromNumber,
  stateSupported,
  stateToNumber,
  type ArcEffect,
  type MigrationFeatures,
  type MigrationState,
} from "../../src/migration/v2/states.js";

const FEATURE_SETS: ReadonlyArray<{ name: string; features: MigrationFeatures }> = [
  { name: "STOP_COPY", features: {} },
  { name: "STOP_COPY|P2P", features: { p2p: true } },
  { name: "STOP_COPY|PRE_COPY", features: { precopy: true } },
  { name: "STOP_COPY|P2P|PRE_COPY", features: { p2p: true, precopy: true } },
];
const ALL: MigrationFeatures = { p2p: true, precopy: true };

// ---------------------------------------------------------------------------------------------
// Independent model, written from the uAPI header text only (not from the module under test).
// ---------------------------------------------------------------------------------------------

/** The arc list of include/uapi/linux/vfio.h with what each arc does to the data session. */
const HEADER_ARCS: ReadonlyArray<readonly [MigrationState, MigrationState, ArcEffect]> = [
  ["RUNNING_P2P", "STOP", "none"],
  ["STOP_COPY", "STOP", "close"],
  ["RESUMING", "STOP", "close"],
  ["PRE_COPY", "RUNNING", "close"],
  ["RUNNING_P2P", "RUNNING", "none"],
  ["PRE_COPY_P2P", "RUNNING_P2P", "close"],
  ["RUNNING", "RUNNING_P2P", "none"],
  ["STOP", "RUNNING_P2P", "none"],
  ["RUNNING", "PRE_COPY", "open-saving"],
  ["RUNNING_P2P", "PRE_COPY_P2P", "open-saving"],
  ["STOP", "STOP_COPY", "open-saving"],
  ["PRE_COPY", "PRE_COPY_P2P", "continue-saving"],
  ["PRE_COPY_P2P", "PRE_COPY", "continue-saving"],
  ["PRE_COPY_P2P", "STOP_COPY", "continue-saving"],
  ["STOP", "RESUMING", "open-resuming"],
];

/** States a feature set has, from the VFIO_DEVICE_FEATURE_MIGRATION description. */
function modelStates(f: MigrationFeatures): Set<MigrationState> {
  const s = new Set<MigrationState>(["STOP", "RUNNING", "STOP_COPY", "RESUMING"]);
  if (f.p2p === true) s.add("RUNNING_P2P");
  if (f.precopy === true) s.add("PRE_COPY");
  if (f.p2p === true && f.precopy === true) s.add("PRE_COPY_P2P");
  return s;
}

/**
 * Arcs a device with `f` executes. Header rules: arcs touching PRE_COPY* are removed without
 * PRE_COPY; an unsupported P2P state "behaves as though the device was fully running", so
 * RUNNING_P2P is merged into RUNNING and PRE_COPY_P2P into PRE_COPY (self-loops vanish).
 */
function modelArcs(f: MigrationFeatures): Map<string, ArcEffect> {
  const arcs = new Map<string, ArcEffect>();
  const merge = (s: MigrationState): MigrationState => (f.p2p === true ? s : s === "RUNNING_P2P" ? "RUNNING" : s === "PRE_COPY_P2P" ? "PRE_COPY" : s);
  for (const [a, b, effect] of HEADER_ARCS) {
    const touchesPrecopy = [a, b].some((s) => s === "PRE_COPY" || s === "PRE_COPY_P2P");
    if (touchesPrecopy && f.precopy !== true) continue;
    const from = merge(a);
    const to = merge(b);
    if (from !== to) arcs.set(`${from}>${to}`, effect);
  }
  return arcs;
}

/**
 * All shortest paths over the model arcs. Saving states may not be interior unless the whole
 * request stays in the saving group (source and target both saving: the session just moves on;
 * see "PRE_COPY -> PRE_COPY_P2P -> STOP_COPY" below). `strict` forbids interior saving states
 * outright, as the header's prose literally says.
 */
function shortestPaths(from: MigrationState, to: MigrationState, f: MigrationFeatures, strict = false): MigrationState[][] {
  const arcs = modelArcs(f);
  const states = [...modelStates(f)];
  const interiorOk = (s: MigrationState): boolean => !isSavingModel(s) || (!strict && isSavingModel(from) && isSavingModel(to));
  let frontier: MigrationState[][] = [[from]];
  const seen = new Set<MigrationState>([from]);
  while (frontier.length > 0) {
    const done = frontier.filter((p) => p[p.length - 1] === to);
    if (done.length > 0) return done.map((p) => p.slice(1));
    const next: MigrationState[][] = [];
    const reached = new Set<MigrationState>();
    for (const p of frontier) {
      const last = p[p.length - 1]!;
      if (p.length > 1 && !interiorOk(last)) continue;
      for (const s of states) {
        if (seen.has(s) || !arcs.has(`${last}>${s}`)) continue;
        next.push([...p, s]);
        reached.add(s);
      }
    }
    for (const s of reached) seen.add(s);
    frontier = next;
  }
  return [];
}

function isSavingModel(s: MigrationState): boolean {
  return s === "STOP_COPY" || s === "PRE_COPY" || s === "PRE_COPY_P2P";
}

/** Where the model expects the kernel to refuse (EINVAL). */
function modelRefuses(from: MigrationState, to: MigrationState, f: MigrationFeatures): boolean {
  const states = modelStates(f);
  if (!states.has(from) || !states.has(to)) return true; // includes ERROR, never in `states`
  return from === "STOP_COPY" && (to === "PRE_COPY" || to === "PRE_COPY_P2P"); // blocked arcs
}

// ---------------------------------------------------------------------------------------------
// Literal data copied from the comment of vfio_mig_get_next_state() in drivers/vfio/vfio_main.c
// ---------------------------------------------------------------------------------------------

/** "The coding will step through multiple states ... if all optional features are supported". */
const KERNEL_LISTED_PATHS = [
  "PRE_COPY -> PRE_COPY_P2P -> STOP_COPY",
  "PRE_COPY -> RUNNING -> RUNNING_P2P",
  "PRE_COPY -> RUNNING -> RUNNING_P2P -> STOP",
  "PRE_COPY -> RUNNING -> RUNNING_P2P -> STOP -> RESUMING",
  "PRE_COPY_P2P -> RUNNING_P2P -> RUNNING",
  "PRE_COPY_P2P -> RUNNING_P2P -> STOP",
  "PRE_COPY_P2P -> RUNNING_P2P -> STOP -> RESUMING",
  "RESUMING -> STOP -> RUNNING_P2P",
  "RESUMING -> STOP -> RUNNING_P2P -> PRE_COPY_P2P",
  "RESUMING -> STOP -> RUNNING_P2P -> RUNNING",
  "RESUMING -> STOP -> RUNNING_P2P -> RUNNING -> PRE_COPY",
  "RESUMING -> STOP -> STOP_COPY",
  "RUNNING -> RUNNING_P2P -> PRE_COPY_P2P",
  "RUNNING -> RUNNING_P2P -> STOP",
  "RUNNING -> RUNNING_P2P -> STOP -> RESUMING",
  "RUNNING -> RUNNING_P2P -> STOP -> STOP_COPY",
  "RUNNING_P2P -> RUNNING -> PRE_COPY",
  "RUNNING_P2P -> STOP -> RESUMING",
  "RUNNING_P2P -> STOP -> STOP_COPY",
  "STOP -> RUNNING_P2P -> PRE_COPY_P2P",
  "STOP -> RUNNING_P2P -> RUNNING",
  "STOP -> RUNNING_P2P -> RUNNING -> PRE_COPY",
  "STOP_COPY -> STOP -> RESUMING",
  "STOP_COPY -> STOP -> RUNNING_P2P",
  "STOP_COPY -> STOP -> RUNNING_P2P -> RUNNING",
];

/** The "driver must implement" arc lists of the same comment, per feature set. */
const KERNEL_REQUIRED_ARCS: Record<string, string[]> = {
  STOP_COPY: ["RESUMING -> STOP", "STOP -> RESUMING", "STOP -> STOP_COPY", "STOP_COPY -> STOP", "RUNNING -> STOP", "STOP -> RUNNING"],
  "STOP_COPY|P2P": [
    "RESUMING -> STOP",
    "STOP -> RESUMING",
    "STOP -> STOP_COPY",
    "STOP_COPY -> STOP",
    "RUNNING -> RUNNING_P2P",
    "RUNNING_P2P -> RUNNING",
    "RUNNING_P2P -> STOP",
    "STOP -> RUNNING_P2P",
  ],
  "STOP_COPY|PRE_COPY": [
    "RESUMING -> STOP",
    "STOP -> RESUMING",
    "STOP -> STOP_COPY",
    "STOP_COPY -> STOP",
    "RUNNING -> STOP",
    "STOP -> RUNNING",
    "RUNNING -> PRE_COPY",
    "PRE_COPY -> RUNNING",
    "PRE_COPY -> STOP_COPY",
  ],
  "STOP_COPY|P2P|PRE_COPY": [
    "RESUMING -> STOP",
    "STOP -> RESUMING",
    "STOP -> STOP_COPY",
    "STOP_COPY -> STOP",
    "RUNNING -> RUNNING_P2P",
    "RUNNING_P2P -> RUNNING",
    "RUNNING_P2P -> STOP",
    "STOP -> RUNNING_P2P",
    "PRE_COPY -> RUNNING",
    "PRE_COPY -> PRE_COPY_P2P",
    "PRE_COPY_P2P -> PRE_COPY",
    "PRE_COPY_P2P -> RUNNING_P2P",
    "PRE_COPY_P2P -> STOP_COPY",
    "RUNNING -> PRE_COPY",
    "RUNNING_P2P -> PRE_COPY_P2P",
  ],
};

const parse = (line: string): MigrationState[] => line.split(" -> ") as MigrationState[];
const show = (from: MigrationState, path: readonly MigrationState[]): string => [from, ...path].join(" -> ");

function expectEinval(fn: () => unknown, from: string, to: string): MigrationError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  expect(caught).toBeInstanceOf(MigrationError);
  const err = caught as MigrationError;
  expect(err.code).toBe("EINVAL");
  expect(err.from).toBe(from);
  expect(err.to).toBe(to);
  expect(err.message).toContain(from);
  expect(err.message).toContain(to);
  return err;
}

// ---------------------------------------------------------------------------------------------

describe("state numbers", () => {
  it("uses the kernel's enum vfio_device_mig_state values", () => {
    expect(MIGRATION_STATES.map((s) => [s, stateToNumber(s)])).toEqual([
      ["ERROR", 0],
      ["STOP", 1],
      ["RUNNING", 2],
      ["STOP_COPY", 3],
      ["RESUMING", 4],
      ["RUNNING_P2P", 5],
      ["PRE_COPY", 6],
      ["PRE_COPY_P2P", 7],
    ]);
  });

  it("round-trips every state and number", () => {
    for (const s of MIGRATION_STATES) expect(stateFromNumber(stateToNumber(s))).toBe(s);
    for (let n = 0; n < 8; n++) expect(stateToNumber(stateFromNumber(n))).toBe(n);
  });

  it.each([8, -1, 0xabcd, 1.5, Number.NaN])("refuses %s", (n) => {
    expect(() => stateFromNumber(n)).toThrow(MigrationError);
  });

  it("maps features to VFIO_MIGRATION_* flags", () => {
    expect(FEATURE_SETS.map((s) => migrationFlags(s.features))).toEqual([1, 3, 5, 7]);
  });
});

describe("supported states", () => {
  it.each(FEATURE_SETS)("match VFIO_DEVICE_FEATURE_MIGRATION for $name", ({ features }) => {
    const got = MIGRATION_STATES.filter((s) => stateSupported(s, features));
    expect(new Set(got)).toEqual(modelStates(features));
  });
});

describe("direct arcs", () => {
  it("carry the session effects of the uAPI header arc list", () => {
    for (const [from, to, effect] of HEADER_ARCS) expect(arcEffect(from, to)).toBe(effect);
  });

  it("report the stand-in arcs used when P2P is unsupported", () => {
    expect(arcEffect("RUNNING", "STOP")).toBe("none");
    expect(arcEffect("STOP", "RUNNING")).toBe("none");
    expect(arcEffect("PRE_COPY", "STOP_COPY")).toBe("continue-saving");
  });

  it("open a saving session on exactly the three header arcs", () => {
    const opening = HEADER_ARCS.filter(([f, t]) => arcEffect(f, t) === "open-saving").map(([f, t]) => `${f} -> ${t}`);
    expect(opening.sort()).toEqual(["RUNNING -> PRE_COPY", "RUNNING_P2P -> PRE_COPY_P2P", "STOP -> STOP_COPY"].sort());
  });

  it("refuse an effect for anything that is not a direct arc", () => {
    for (const from of MIGRATION_STATES) {
      for (const to of MIGRATION_STATES) {
        const direct = FEATURE_SETS.some(({ features }) => isDirectArc(from, to, features));
        if (direct) expect(() => arcEffect(from, to)).not.toThrow();
        else expectEinval(() => arcEffect(from, to), from, to);
      }
    }
    expectEinval(() => arcEffect("STOP_COPY", "PRE_COPY"), "STOP_COPY", "PRE_COPY");
  });

  it.each(FEATURE_SETS)("equal the header arcs with unsupported states folded, $name", ({ features }) => {
    const model = modelArcs(features);
    for (const from of MIGRATION_STATES) {
      for (const to of MIGRATION_STATES) {
        expect(isDirectArc(from, to, features), `${from} -> ${to}`).toBe(model.has(`${from}>${to}`));
        if (model.has(`${from}>${to}`)) expect(arcEffect(from, to)).toBe(model.get(`${from}>${to}`));
      }
      expect(directArcsFrom(from, features).sort()).toEqual(MIGRATION_STATES.filter((to) => model.has(`${from}>${to}`)).sort());
    }
  });

  it.each(FEATURE_SETS)("are exactly the arcs the kernel requires of a $name driver", ({ name, features }) => {
    const used = new Set<string>();
    for (const from of MIGRATION_STATES) {
      for (const to of MIGRATION_STATES) {
        if (modelRefuses(from, to, features) || from === to) continue;
        let cur = from;
        for (const step of migrationPath(from, to, features)) {
          used.add(`${cur} -> ${step}`);
          cur = step;
        }
      }
    }
    expect([...used].sort()).toEqual([...KERNEL_REQUIRED_ARCS[name]!].sort());
    const direct = MIGRATION_STATES.flatMap((f) => directArcsFrom(f, features).map((t) => `${f} -> ${t}`));
    expect(direct.sort()).toEqual([...KERNEL_REQUIRED_ARCS[name]!].sort());
  });
});

describe("nextState / migrationPath against the independent shortest-path model", () => {
  it.each(FEATURE_SETS)("every (from, to) pair, $name", ({ features }) => {
    let compared = 0;
    for (const from of MIGRATION_STATES) {
      for (const to of MIGRATION_STATES) {
        if (modelRefuses(from, to, features)) {
          expectEinval(() => nextState(from, to, features), from, to);
          expectEinval(() => migrationPath(from, to, features), from, to);
          continue;
        }
        const path = migrationPath(from, to, features);
        if (from === to) {
          expect(path).toEqual([]);
          expect(nextState(from, to, features)).toBe(from);
          continue;
        }
        expect(nextState(from, to, features)).toBe(path[0]);
        const expected = shortestPaths(from, to, features);
        expect(expected.length, `${from} -> ${to} reachable`).toBeGreaterThan(0);
        // Equal-length alternatives: the kernel's table decides; for the full feature set the
        // vfio_main.c listing pins every multi-step path, checked literally below.
        expect(
          expected.map((p) => show(from, p)),
          `${from} -> ${to}`,
        ).toContain(show(from, path));
        if (expected.length > 1) {
          expect(features).toEqual(ALL);
          expect(KERNEL_LISTED_PATHS).toContain(show(from, path));
        }
        compared++;
      }
    }
    const n = modelStates(features).size;
    const blocked = features.precopy === true ? (features.p2p === true ? 2 : 1) : 0;
    expect(compared).toBe(n * (n - 1) - blocked);
  });

  it("reproduces every multi-step path listed in vfio_main.c, and no other", () => {
    for (const line of KERNEL_LISTED_PATHS) {
      const [from, ...rest] = parse(line);
      const to = rest[rest.length - 1]!;
      expect(show(from!, migrationPath(from!, to, ALL))).toBe(line);
    }
    const multi: string[] = [];
    for (const from of MIGRATION_STATES) {
      for (const to of MIGRATION_STATES) {
        if (modelRefuses(from, to, ALL)) continue;
        const path = migrationPath(from, to, ALL);
        if (path.length > 1) multi.push(show(from, path));
      }
    }
    expect(multi.sort()).toEqual([...KERNEL_LISTED_PATHS].sort());
  });

  it("keeps the saving session from PRE_COPY to STOP_COPY although the header says 'no interior saving states'", () => {
    // The kernel table goes through PRE_COPY_P2P (a saving state) so the pre-copy data session
    // carries on; the literal header rule would close it and open a new one via STOP.
    expect(migrationPath("PRE_COPY", "STOP_COPY", ALL)).toEqual(["PRE_COPY_P2P", "STOP_COPY"]);
    expect(shortestPaths("PRE_COPY", "STOP_COPY", ALL, true)).toEqual([["RUNNING", "RUNNING_P2P", "STOP", "STOP_COPY"]]);
  });

  it("matches the strict 'no interior saving state' rule everywhere else", () => {
    for (const { features } of FEATURE_SETS) {
      for (const from of MIGRATION_STATES) {
        for (const to of MIGRATION_STATES) {
          if (modelRefuses(from, to, features) || from === to) continue;
          if (from === "PRE_COPY" && to === "STOP_COPY") continue;
          const strict = shortestPaths(from, to, features, true).map((p) => show(from, p));
          expect(strict).toContain(show(from, migrationPath(from, to, features)));
        }
      }
    }
  });

  it("skips RUNNING_P2P without P2P and PRE_COPY states without PRE_COPY", () => {
    expect(migrationPath("RUNNING", "STOP", {})).toEqual(["STOP"]);
    expect(migrationPath("STOP", "RUNNING", { precopy: true })).toEqual(["RUNNING"]);
    expect(migrationPath("PRE_COPY", "STOP_COPY", { precopy: true })).toEqual(["STOP_COPY"]);
    expect(migrationPath("PRE_COPY", "RESUMING", { precopy: true })).toEqual(["RUNNING", "STOP", "RESUMING"]);
    expect(migrationPath("RUNNING", "STOP_COPY", { p2p: true })).toEqual(["RUNNING_P2P", "STOP", "STOP_COPY"]);
    expect(migrationPath("RUNNING", "STOP_COPY", {})).toEqual(["STOP", "STOP_COPY"]);
  });
});

describe("refusals", () => {
  it.each(FEATURE_SETS)("ERROR is never a source or a target, $name", ({ features }) => {
    for (const s of MIGRATION_STATES) {
      const fromErr = expectEinval(() => nextState("ERROR", s, features), "ERROR", s);
      expect(fromErr.message).toMatch(/reset/);
      expectEinval(() => migrationPath("ERROR", s, features), "ERROR", s);
      expectEinval(() => nextState(s, "ERROR", features), s, "ERROR");
      expectEinval(() => migrationPath(s, "ERROR", features), s, "ERROR");
    }
  });

  it.each(FEATURE_SETS)("unsupported states are refused as source and target, $name", ({ features }) => {
    const unsupported = MIGRATION_STATES.filter((s) => s !== "ERROR" && !modelStates(features).has(s));
    expect(unsupported.length).toBe(7 - modelStates(features).size);
    for (const u of unsupported) {
      for (const s of MIGRATION_STATES) {
        const a = expectEinval(() => nextState(u, s, features), u, s);
        if (s !== "ERROR") expect(a.message).toMatch(/not supported/);
        const b = expectEinval(() => nextState(s, u, features), s, u);
        if (s !== "ERROR" && modelStates(features).has(s)) expect(b.message).toMatch(/not supported/);
      }
      expectEinval(() => migrationPath(u, u, features), u, u);
    }
  });

  it("STOP_COPY -> PRE_COPY and STOP_COPY -> PRE_COPY_P2P are blocked (and terminate)", () => {
    for (const to of ["PRE_COPY", "PRE_COPY_P2P"] as const) {
      const err = expectEinval(() => nextState("STOP_COPY", to, ALL), "STOP_COPY", to);
      expect(err.message).toMatch(/blocked/);
      expect(err.state).toBe("STOP_COPY");
    }
    expect(expectEinval(() => nextState("STOP_COPY", "PRE_COPY", { precopy: true }), "STOP_COPY", "PRE_COPY").message).toMatch(/blocked/);
  });

  it("refuses values that are not states", () => {
    expect(() => nextState("BOGUS" as MigrationState, "STOP", ALL)).toThrow(MigrationError);
    expect(() => nextState("STOP", "toString" as MigrationState, ALL)).toThrow(MigrationError);
    expect(() => arcEffect("STOP", "toString" as MigrationState)).toThrow(MigrationError);
    expect(isDirectArc("STOP", "constructor" as MigrationState, ALL)).toBe(false);
  });
});

const stateArb = fc.constantFrom(...MIGRATION_STATES);
const featuresArb = fc.constantFrom(...FEATURE_SETS.map((s) => s.features));

describe("properties", () => {
  test.prop([stateArb, stateArb, featuresArb])("a path ends at the target, uses direct arcs, opens a session only on its last arc", (from, to, features) => {
    if (modelRefuses(from, to, features)) {
      expect(() => migrationPath(from, to, features)).toThrow(MigrationError);
      return;
    }
    const path = migrationPath(from, to, features);
    if (from === to) {
      expect(path).toEqual([]);
      return;
    }
    expect(path[path.length - 1]).toBe(to);
    let cur = from;
    path.forEach((step, i) => {
      expect(isDirectArc(cur, step, features)).toBe(true);
      const effect = arcEffect(cur, step);
      if (effect === "open-saving" || effect === "open-resuming") expect(i).toBe(path.length - 1);
      cur = step;
    });
    // A saving state is interior only while the whole request stays in the saving group
    // (PRE_COPY -> PRE_COPY_P2P -> STOP_COPY); otherwise never.
    const interior = path.slice(0, -1);
    if (interior.some(isSavingState)) {
      expect([from, ...path].every(isSavingState)).toBe(true);
    }
    expect(new Set([from, ...path]).size).toBe(path.length + 1);
  });
});
