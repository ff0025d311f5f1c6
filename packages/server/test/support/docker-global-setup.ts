import { randomBytes } from 'node:crypto';
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
  const list = await docker.listContainers({ all: true, filters: { label: [`${TEST_RUN_LABEL}=${runId}`] } });
  await Promise.all(list.map((c) => docker.getContainer(c.Id).remove({ force: true, v: true }).catch(() => undefined)));
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
  project.provide('dockerTestRun', runId);
  project.provide('dockerAvailable', available);
  return async () => {
    if (!available) return;
    const n = await removeLabelled(docker, runId);
    if (n > 0) process.stderr.write(`docker teardown removed ${n} leftover test container(s)\n`);
  };
}
