import { fc, test } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import { MigrationError } from "../../src/core/errors.js";
import {
  classifyDeviceState,
  DEVICE_STATE_ERROR,
  DEVICE_STATE_NDMA,
  DEVICE_STATE_RESERVED_MASK,
  DEVICE_STATE_RESET,
  DEVICE_STATE_RESUMING,
  DEVICE_STATE_RUNNING,
  DEVICE_STATE_SAVING,
  DEVICE_STATE_TABLE,
  deviceStateName,
  isDeviceStateWriteAllowed,
  validateDeviceStateWrite,
} from "../../src/migration/v1/device-state.js";

const WITH_NDMA = { ndma: true } as const;
const NO_NDMA = { ndma: false } as const;

// The v1 (5.8-5.17, mask 0x7) and RFC (mask 0xF) macros, transcribed from the uAPI text.
const v1Valid = (s: number): boolean => ((s & 4) !== 0 ? (s & 7) === 4 : true);
const rfcValid = (s: number): boolean => !((s & 2) !== 0 && (s & 4) !== 0) && !((s & 4) !== 0 && (s & 1) !== 0);
const v1IsError = (s: number): boolean => (s & 7) === 6;
const rfcIsError = (s: number): boolean => (s & 0xf) === 6;

function expectRefused(current: number, requested: number, options: { ndma: boolean }, why?: RegExp): void {
  let caught: unknown;
  try {
    validateDeviceStateWrite(current, requested, options);
  } catch (e) {
    caught = e;
  }
  expect(caught, `${deviceStateName(current)} <- ${deviceStateName(requested)}`).toBeInstanceOf(MigrationError);
  const err = caught as MigrationError;
  expect(err.code).toBe("EINVAL");
  expect(err.from).toBe(deviceStateName(current));
  expect(err.to).toBe(deviceStateName(requested));
  expect(err.message).toContain(deviceStateName(requested));
  if (why !== undefined) expect(err.message).toMatch(why);
}

describe("bits", () => {
  it("has the uAPI values", () => {
    expect([DEVICE_STATE_RUNNING, DEVICE_STATE_SAVING, DEVICE_STATE_RESUMING, DEVICE_STATE_NDMA]).toEqual([1, 2, 4, 8]);
    expect(DEVICE_STATE_RESERVED_MASK).toBe(0xfffffff0);
    expect(DEVICE_STATE_ERROR).toBe(6);
    expect(DEVICE_STATE_RESET).toBe(1);
    expect(DEVICE_STATE_TABLE).toHaveLength(16);
  });
});

describe("classifyDeviceState: the 16 combinations (reference section 1.7)", () => {
  it("0x0 STOP", () => {
    expect(classifyDeviceState(0x0)).toMatchObject({ name: "_STOP", valid: true, isError: false, v1IsError: false, v2: "STOP", ndma: false });
  });
  it("0x1 RUNNING", () => {
    expect(classifyDeviceState(0x1)).toMatchObject({ name: "_RUNNING", valid: true, isError: false, v1IsError: false, v2: "RUNNING" });
  });
  it("0x2 stop-and-copy", () => {
    expect(classifyDeviceState(0x2)).toMatchObject({
      name: "_SAVING",
      meaning: "stop-and-copy",
      valid: true,
      isError: false,
      v1IsError: false,
      v2: "STOP_COPY",
    });
  });
  it("0x3 pre-copy", () => {
    expect(classifyDeviceState(0x3)).toMatchObject({
      name: "_RUNNING|_SAVING",
      meaning: "pre-copy",
      valid: true,
      isError: false,
      v1IsError: false,
      v2: "PRE_COPY",
    });
  });
  it("0x4 RESUMING", () => {
    expect(classifyDeviceState(0x4)).toMatchObject({ name: "_RESUMING", valid: true, isError: false, v1IsError: false, v2: "RESUMING" });
  });
  it("0x5 RESUMING|RUNNING: invalid", () => {
    expect(classifyDeviceState(0x5)).toMatchObject({ name: "_RUNNING|_RESUMING", valid: false, isError: false, v1IsError: false, v2: undefined });
  });
  it("0x6 SAVING|RESUMING: the error state under both macro sets", () => {
    expect(classifyDeviceState(0x6)).toMatchObject({ name: "_ERROR", valid: false, isError: true, v1IsError: true, v2: "ERROR" });
  });
  it("0x7 RESUMING|SAVING|RUNNING: invalid, not the error state", () => {
    expect(classifyDeviceState(0x7)).toMatchObject({ name: "_RUNNING|_SAVING|_RESUMING", valid: false, isError: false, v1IsError: false, v2: undefined });
  });
  it("0x8 NDMA without RUNNING: behaves as STOP", () => {
    expect(classifyDeviceState(0x8)).toMatchObject({ name: "_NDMA", valid: true, isError: false, v1IsError: false, v2: "STOP", ndma: true });
  });
  it("0x9 RUNNING|NDMA: RUNNING_P2P", () => {
    expect(classifyDeviceState(0x9)).toMatchObject({ name: "_RUNNING|_NDMA", valid: true, isError: false, v1IsError: false, v2: "RUNNING_P2P", ndma: true });
  });
  it("0xA SAVING|NDMA: stop-and-copy", () => {
    expect(classifyDeviceState(0xa)).toMatchObject({ name: "_SAVING|_NDMA", valid: true, isError: false, v1IsError: false, v2: "STOP_COPY" });
  });
  it("0xB RUNNING|SAVING|NDMA: PRE_COPY_P2P", () => {
    expect(classifyDeviceState(0xb)).toMatchObject({ name: "_RUNNING|_SAVING|_NDMA", valid: true, isError: false, v1IsError: false, v2: "PRE_COPY_P2P" });
  });
  it("0xC RESUMING|NDMA: resuming", () => {
    expect(classifyDeviceState(0xc)).toMatchObject({ name: "_RESUMING|_NDMA", valid: true, isError: false, v1IsError: false, v2: "RESUMING" });
  });
  it("0xD RESUMING|RUNNING|NDMA: invalid", () => {
    expect(classifyDeviceState(0xd)).toMatchObject({ name: "_RUNNING|_RESUMING|_NDMA", valid: false, isError: false, v1IsError: false, v2: undefined });
  });
  it("0xE SAVING|RESUMING|NDMA: invalid; ERROR only under the v1 mask", () => {
    expect(classifyDeviceState(0xe)).toMatchObject({ name: "_SAVING|_RESUMING|_NDMA", valid: false, isError: false, v1IsError: true, v2: undefined });
  });
  it("0xF all bits: invalid", () => {
    expect(classifyDeviceState(0xf)).toMatchObject({ name: "_RUNNING|_SAVING|_RESUMING|_NDMA", valid: false, isError: false, v1IsError: false, v2: undefined });
  });

  it("agrees with the VALID and IS_ERROR macros of both revisions", () => {
    for (let s = 0; s < 16; s++) {
      const info = classifyDeviceState(s);
      expect(info.valid, `VALID(${s})`).toBe(v1Valid(s));
      expect(info.valid, `RFC VALID(${s})`).toBe(rfcValid(s));
      expect(info.isError, `RFC IS_ERROR(${s})`).toBe(rfcIsError(s));
      expect(info.v1IsError, `IS_ERROR(${s})`).toBe(v1IsError(s));
      expect(info.bits).toBe(s);
      expect(info.reserved).toBe(0);
      expect(deviceStateName(s)).toBe(info.name);
    }
  });

  it("marks values with reserved bits invalid and names them", () => {
    for (let bit = 4; bit < 32; bit++) {
      const reserved = (1 << bit) >>> 0;
      const info = classifyDeviceState((reserved | DEVICE_STATE_RUNNING) >>> 0);
      expect(info).toMatchObject({ valid: false, reserved, bits: 1, name: "_RUNNING" });
      expect(classifyDeviceState((reserved | DEVICE_STATE_ERROR) >>> 0).isError).toBe(false);
    }
    expect(deviceStateName(0x11)).toBe("_RUNNING|reserved(0x10)");
    expect(deviceStateName(0xffffffff)).toBe("_RUNNING|_SAVING|_RESUMING|_NDMA|reserved(0xfffffff0)");
  });

  it.each([Number.NaN, -1, 1.5, 2 ** 32])("refuses %s as a register value", (v) => {
    expect(() => classifyDeviceState(v)).toThrow(MigrationError);
    expect(deviceStateName(v)).toMatch(/^invalid/);
    expectRefused(DEVICE_STATE_RUNNING, v, WITH_NDMA);
  });
});

/**
 * Accept ('Y') or refuse ('.') of a write of each value 0x0..0xF (left to right), per current
 * state. "Migration drivers should attempt to support any transition between valid states"
 * (NDMA RFC): every valid value is accepted from every valid state; the error state accepts none.
 */
const WRITES_WITH_NDMA: ReadonlyArray<readonly [number, string]> = [
  // 0x_:   0123456789ABCDEF
  [0x0, "YYYYY...YYYYY..."], // STOP
  [0x1, "YYYYY...YYYYY..."], // RUNNING
  [0x2, "YYYYY...YYYYY..."], // stop-and-copy (-> pre-copy starts a new save)
  [0x3, "YYYYY...YYYYY..."], // pre-copy
  [0x4, "YYYYY...YYYYY..."], // RESUMING (leaving it is the validation point)
  [0x8, "YYYYY...YYYYY..."], // NDMA|STOP = STOP
  [0x9, "YYYYY...YYYYY..."], // RUNNING|NDMA = RUNNING
  [0xa, "YYYYY...YYYYY..."], // SAVING|NDMA = stop-and-copy
  [0xb, "YYYYY...YYYYY..."], // RUNNING|SAVING|NDMA = pre-copy
  [0xc, "YYYYY...YYYYY..."], // RESUMING|NDMA = RESUMING
  [0x6, "................"], // error state: only a reset leaves it
];

const WRITES_WITHOUT_NDMA: ReadonlyArray<readonly [number, string]> = [
  [0x0, "YYYYY..........."],
  [0x1, "YYYYY..........."],
  [0x2, "YYYYY..........."],
  [0x3, "YYYYY..........."],
  [0x4, "YYYYY..........."],
  [0x6, "................"],
];

describe("validateDeviceStateWrite", () => {
  const hex = (rows: ReadonlyArray<readonly [number, string]>) => rows.map(([c, e]) => [`0x${c.toString(16)}`, c, e] as const);

  it.each(hex(WRITES_WITH_NDMA))("with NDMA, from %s", (_label, current, expected) => {
    for (let v = 0; v < 16; v++) {
      const accept = expected[v] === "Y";
      if (accept) expect(() => validateDeviceStateWrite(current, v, WITH_NDMA)).not.toThrow();
      else expectRefused(current, v, WITH_NDMA);
      expect(isDeviceStateWriteAllowed(current, v, WITH_NDMA)).toBe(accept);
    }
  });

  it.each(hex(WRITES_WITHOUT_NDMA))("without NDMA, from %s", (_label, current, expected) => {
    for (let v = 0; v < 16; v++) {
      const accept = expected[v] === "Y";
      if (accept) expect(() => validateDeviceStateWrite(current, v, NO_NDMA)).not.toThrow();
      else expectRefused(current, v, NO_NDMA);
    }
  });

  it("says why a write is refused", () => {
    expectRefused(0x1, 0x9, NO_NDMA, /NDMA/);
    expectRefused(0x1, 0x11, WITH_NDMA, /reserved bits 0x10/);
    expectRefused(0x1, 0x5, WITH_NDMA, /not a valid state/);
    expectRefused(0x1, 0x6, WITH_NDMA, /not a valid state/);
    expectRefused(0x6, 0x1, WITH_NDMA, /reset/);
    expectRefused(0x6, 0x0, NO_NDMA, /reset/);
  });

  it("accepts every same-value write of a valid state and refuses the error encoding", () => {
    for (let v = 0; v < 16; v++) {
      const info = classifyDeviceState(v);
      expect(isDeviceStateWriteAllowed(v, v, WITH_NDMA)).toBe(info.valid);
    }
  });

  it("refuses reserved bits from every valid state", () => {
    for (const [current] of WRITES_WITH_NDMA.filter(([c]) => c !== DEVICE_STATE_ERROR)) {
      for (let bit = 4; bit < 32; bit++) {
        expectRefused(current, ((1 << bit) | current) >>> 0, WITH_NDMA, /reserved/);
      }
      expectRefused(current, 0xfffffff1, WITH_NDMA, /reserved/);
    }
  });

  it("refuses the NDMA bit when the device lacks NDMA, for every value that carries it", () => {
    for (const current of [0x0, 0x1, 0x2, 0x3, 0x4]) {
      for (let v = 8; v < 16; v++) expectRefused(current, v, NO_NDMA);
    }
  });

  it("refuses to work from a current value the register cannot hold", () => {
    for (const current of [0x5, 0x7, 0xd, 0xe, 0xf, 0x11]) expectRefused(current, 0x1, WITH_NDMA, /register can hold/);
    for (const current of [0x8, 0x9, 0xa, 0xb, 0xc]) expectRefused(current, 0x1, NO_NDMA, /register can hold/);
  });

  it("follows the v1 documented flows", () => {
    const walk = (states: number[], options: { ndma: boolean }): void => {
      for (let i = 1; i < states.length; i++) validateDeviceStateWrite(states[i - 1]!, states[i]!, options);
    };
    walk([0x1, 0x0], NO_NDMA); // normal shutdown
    walk([0x1, 0x2, 0x0], NO_NDMA); // save/suspend
    walk([0x1, 0x3, 0x2, 0x0], NO_NDMA); // live migration
    walk([0x1, 0x4, 0x1], NO_NDMA); // resume
    walk([0x1, 0x9, 0xb, 0xa, 0x0], WITH_NDMA); // P2P-quiesced live migration
    walk([0x3, 0x1], NO_NDMA); // cancelled pre-copy (QEMU v1)
  });

  it("a device should support the writes between valid states libvfio-user's table refused: 0->3, 2->3, 2->4, 3->4, 4->2, 4->3 and their NDMA variants", () => {
    const pairs: [number, number][] = [
      [0, 3],
      [2, 3],
      [2, 4],
      [3, 4],
      [4, 2],
      [4, 3],
    ];
    for (const [from, to] of pairs) {
      validateDeviceStateWrite(from, to, NO_NDMA);
      for (const n of [0, 8]) for (const m of [0, 8]) validateDeviceStateWrite(from | n, to | m, WITH_NDMA);
    }
  });
});

describe("properties", () => {
  test.prop([fc.nat({ max: 0xffffffff }), fc.nat({ max: 0xffffffff }), fc.boolean()])(
    "an accepted write has no reserved bits, is valid, and needs NDMA only when supported",
    (current, requested, ndma) => {
      if (!isDeviceStateWriteAllowed(current, requested, { ndma })) return;
      const info = classifyDeviceState(requested);
      expect(info.reserved).toBe(0);
      expect(info.valid).toBe(true);
      expect(ndma || !info.ndma).toBe(true);
      expect(classifyDeviceState(current).isError).toBe(false);
    },
  );

  test.prop([fc.integer({ min: 0, max: 15 }), fc.integer({ min: 0, max: 15 })])(
    "NDMA toggling never changes whether a write is accepted",
    (current, requested) => {
      const base = isDeviceStateWriteAllowed(current & 7, requested & 7, WITH_NDMA);
      const valid = (s: number): boolean => classifyDeviceState(s).valid;
      if (!valid(current) || !valid(requested)) return;
      expect(isDeviceStateWriteAllowed(current, requested, WITH_NDMA)).toBe(base);
    },
  );
});
