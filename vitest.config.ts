import { defineConfig } from 'vitest/config';

// One runner for the whole suite. Numeric tests are CPU-heavy: run files in
// forked processes (Dawn's native bindings are not safe in worker threads).
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    testTimeout: 120_000,
    hookTimeout: 120_000,
  },
});
