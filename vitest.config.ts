import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // One fixed fast-check seed for every property (random under `npm run test:explore`).
    setupFiles: ["test/support/fast-check-seed.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Two cores: one worker per core keeps property suites from starving each other.
    maxWorkers: 2,
  },
});
