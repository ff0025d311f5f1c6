import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    projects: [
      {
        test: {
          name: 'unit',
          include: ['packages/*/src/**/*.test.ts'],
          exclude: ['**/*.docker.test.ts', '**/*.pg.test.ts'],
          testTimeout: 20_000,
        },
      },
      {
        test: {
          name: 'docker',
          include: [
            'packages/*/src/**/*.docker.test.ts',
            'packages/*/test/e2e/**/*.docker.e2e.test.ts',
          ],
          globalSetup: ['packages/server/test/support/docker-global-setup.ts'],
          testTimeout: 120_000,
          hookTimeout: 180_000,
          // One daemon, two cores: files run one at a time so timings stay sane.
          fileParallelism: false,
        },
      },
      {
        test: {
          name: 'e2e',
          include: ['packages/*/test/e2e/**/*.e2e.test.ts'],
          exclude: ['**/*.docker.e2e.test.ts', '**/*.pg.e2e.test.ts'],
          testTimeout: 60_000,
          hookTimeout: 60_000,
        },
      },
      {
        test: {
          name: 'pg',
          include: ['packages/*/src/**/*.pg.test.ts', 'packages/*/test/e2e/**/*.pg.e2e.test.ts'],
          globalSetup: ['packages/server/test/support/pg-global-setup.ts'],
          testTimeout: 60_000,
          hookTimeout: 120_000,
          // After the other projects: the lease contention test loads both cores on purpose.
          sequence: { groupOrder: 1 },
        },
      },
    ],
  },
});
