import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import Docker from 'dockerode';
import type { TestProject } from 'vitest/node';

/** Label every container of this test run carries, so teardown can remove leftovers. */
export const TEST_RUN_LABEL = 'stacyvm.test-run';

declare module 'vitest' {
  export interface ProvidedContext {
    dockerTestRun: string;
    dockerAvailable: boolean;
  }
}

async function removeLabelled(docker: Docker, runId: string): Promise<number> {
  const list = await docker.listContainers({
    all: true,
    filters: { label: [`${TEST_RUN_LABEL}=${runId}`] },
  });
  await Promise.all(
    list.map((c) =>
      docker
        .getContainer(c.Id)
        .remove({ force: true, v: true })
        .catch(() => undefined),
    ),
  );
  return list.length;
}

/**
 * Checks the daemon answers (in CI a missing daemon fails the run instead of
 * skipping it) and, after the run, removes every container labelled with this
 * run's id.
 */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const runId = randomBytes(6).toString('hex');
  const docker = new Docker();
  let available = true;
  try {
    await docker.ping();
  } catch (err) {
    available = false;
    if (process.env['CI'] === 'true') {
      throw new Error(`CI=true but the Docker daemon does not answer: ${(err as Error).message}`);
    }
  }
  if (available) {
    // The suites use the busybox test image; build it (about 2 s) when missing so a
    // fresh clone's `npm test` works on any machine with a daemon.
    const present = await docker
      .getImage('stacyvm-test/busybox:latest')
      .inspect()
      .then(
        () => true,
        () => false,
      );
    if (!present) {
      const script = fileURLToPath(
        new URL('../../../../scripts/build-test-images.sh', import.meta.url),
      );
      execFileSync('bash', [script, '--only', 'busybox'], { stdio: 'inherit' });
    }
  }
  project.provide('dockerTestRun', runId);
  project.provide('dockerAvailable', available);
  return async () => {
    if (!available) return;
    const n = await removeLabelled(docker, runId);
    if (n > 0) process.stderr.write(`docker teardown removed ${n} leftover test container(s)\n`);
  };
}
