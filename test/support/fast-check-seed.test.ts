// The setup file is in force: every property draws from the repository's seed (unless exploring),
// so two runs of the same property see the same inputs.
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { exploring, FIXED_SEED } from "./fast-check-seed.js";

describe.skipIf(exploring)("fixed fast-check seed", () => {
  it("is the global seed", () => {
    expect(fc.readConfigureGlobal().seed).toBe(FIXED_SEED);
  });

  it("makes a property's inputs the same on every run", () => {
    const seen = (): number[][] => {
      const values: number[][] = [];
      fc.assert(
        fc.property(fc.array(fc.integer()), (a) => {
          values.push(a);
        }),
        { numRuns: 20 },
      );
      return values;
    };
    expect(seen()).toEqual(seen());
  });
});
