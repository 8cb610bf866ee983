import { fc, test } from "@fast-check/vitest";
import { describe, expect } from "vitest";
import { allocate } from "../../src/core/buffer.js";
import { encodeSnapshotReference } from "../../src/codec/reference.js";
import { decodeSnapshot, encodeSnapshot } from "../../src/codec/snapshot.js";

// A state with zero runs, repeats and noise, so every record kind and run boundary occurs.
const stateArb = fc
  .record({
    size: fc.integer({ min: 0, max: 40_000 }),
    seed: fc.integer(),
    zeroFrom: fc.double({ min: 0, max: 1, noNaN: true }),
    zeroTo: fc.double({ min: 0, max: 1, noNaN: true }),
  })
  .map(({ size, seed, zeroFrom, zeroTo }) => {
    const state = new Uint8Array(size);
    let x = seed | 1;
    for (let i = 0; i < size; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      state[i] = (x & 3) === 0 ? 0 : x & 0xff;
    }
    state.fill(0, Math.floor(Math.min(zeroFrom, zeroTo) * size), Math.floor(Math.max(zeroFrom, zeroTo) * size));
    return state;
  });

const optionsArb = fc.record({
  pageSize: fc.constantFrom(64, 256, 4096),
  payloadPages: fc.integer({ min: 1, max: 6 }),
  checksum: fc.constantFrom("xxh3" as const, "crc32c" as const),
  config: fc.option(fc.uint8Array({ maxLength: 40 }), { nil: undefined }),
  compress: fc.constantFrom("none" as const, "lz4" as const),
});

describe("Wasm encoder against the pure-TS reference encoder", () => {
  test.prop([stateArb, optionsArb, fc.array(fc.nat(), { maxLength: 20 })], { numRuns: 60 })(
    "full and incremental streams are byte-identical",
    (state, o, flips) => {
      const options = {
        pageSize: o.pageSize,
        maxRecordPayload: o.pageSize * o.payloadPages,
        checksum: o.checksum,
        compress: o.compress,
        ...(o.config ? { config: o.config } : {}),
      };
      expect(Buffer.from(encodeSnapshot(state, options)).equals(encodeSnapshotReference(state, options))).toBe(true);
      const base = state.slice();
      for (const f of flips) if (base.length > 0) base[f % base.length]! ^= 1 + (f & 0x7f);
      const incremental = encodeSnapshot(state, { ...options, base });
      expect(Buffer.from(incremental).equals(encodeSnapshotReference(state, { ...options, base }))).toBe(true);
      expect(Buffer.from(decodeSnapshot(incremental, { base })).equals(state)).toBe(true);
    },
  );

  test("the stream does not depend on whether the state lives in core memory", () => {
    // Larger than the encoder's staging window, so the JS copy is encoded in several slices.
    const size = 3 * 1024 * 1024 + 4321;
    const state = new Uint8Array(size);
    for (let i = 0; i < size; i++) state[i] = (i * 2654435761) >>> 27;
    state.fill(0, 100_000, 1_300_000);
    const resident = allocate(size);
    resident.bytes.set(state);
    const options = { pageSize: 512, maxRecordPayload: 512 * 7 };
    const fromJs = encodeSnapshot(state, options);
    const fromCore = encodeSnapshot(resident.bytes, options);
    resident.free();
    expect(Buffer.from(fromJs).equals(fromCore)).toBe(true);
    expect(Buffer.from(fromJs).equals(encodeSnapshotReference(state, options))).toBe(true);
  });
});
