import { describe, expect, it } from 'vitest';
import { MockProvider } from '../providers/mock/mock-provider.js';
import { startHarness } from '../../test/support/harness.js';

describe('startup reconcile', () => {
  it('adopts a runtime that has no record, as a running sandbox with the default TTL', async () => {
    const h2 = await startHarness();
    const baseDir = h2.config.providers.mock.base_dir;
    const orphanId = 'sb-0a0b0c0d';
    try {
      const p = new MockProvider({ baseDir });
      await p.init();
      await p.spawn({
        sandboxId: orphanId,
        image: 'x',
        memoryMb: 1,
        vcpus: 1,
        metadata: {},
        ports: [],
      });
      const adopted = await h2.cp.sandboxes.reconcileOrphans('local', 'mock', 'adopt', {
        requestId: 't',
        actor: 'test',
      });
      expect(adopted.adopted).toEqual([orphanId]);
      const res = await h2.request({ method: 'GET', url: `/api/v1/sandboxes/${orphanId}` });
      expect(res.json()).toMatchObject({
        id: orphanId,
        state: 'running',
        metadata: { adopted: 'true' },
      });
      const exec = await h2.request({
        method: 'POST',
        url: `/api/v1/sandboxes/${orphanId}/exec`,
        body: { command: 'echo adopted' },
      });
      expect(exec.json()).toMatchObject({ stdout: 'adopted\n' });
      // A second pass finds nothing new.
      expect(
        await h2.cp.sandboxes.reconcileOrphans('local', 'mock', 'adopt', {
          requestId: 't',
          actor: 'test',
        }),
      ).toEqual({
        adopted: [],
        removed: [],
      });
    } finally {
      await h2.close();
    }
  });

  it('removes orphans under the remove policy and always removes runtimes of destroyed records', async () => {
    const h = await startHarness();
    try {
      const p = new MockProvider({ baseDir: h.config.providers.mock.base_dir });
      await p.spawn({
        sandboxId: 'sb-11112222',
        image: 'x',
        memoryMb: 1,
        vcpus: 1,
        metadata: {},
        ports: [],
      });
      const id = await h.spawn();
      // The record is destroyed but its runtime comes back (e.g. restored from a backup).
      await h.request({ method: 'DELETE', url: `/api/v1/sandboxes/${id}` });
      await p.spawn({ sandboxId: id, image: 'x', memoryMb: 1, vcpus: 1, metadata: {}, ports: [] });
      const out = await h.cp.sandboxes.reconcileOrphans('local', 'mock', 'remove', {
        requestId: 't',
        actor: 'test',
      });
      expect(out.removed.sort()).toEqual([id, 'sb-11112222'].sort());
      expect(await p.listRuntimes()).toEqual([]);
    } finally {
      await h.close();
    }
  });
});

describe('a runtime removed behind our back', () => {
  it('turns the next operation into a 404 and marks the record destroyed, releasing its lease', async () => {
    const h = await startHarness();
    try {
      const id = await h.spawn();
      const p = new MockProvider({ baseDir: h.config.providers.mock.base_dir });
      await p.destroy(id);
      const res = await h.request({
        method: 'POST',
        url: `/api/v1/sandboxes/${id}/exec`,
        body: { command: 'true' },
      });
      expect(res.statusCode).toBe(404);
      expect(res.json().message).toContain('runtime is gone');
      expect((await h.cp.store.sandboxes.get(id))?.state).toBe('destroyed');
      expect((await h.cp.store.leases.get(id))?.holderId).toBe('');
      const list = await h.request({ method: 'GET', url: '/api/v1/sandboxes' });
      expect(list.json()).toEqual([]);
    } finally {
      await h.close();
    }
  });

  it('keeps the sandbox when only a file is missing', async () => {
    const h = await startHarness();
    try {
      const id = await h.spawn();
      const res = await h.request({
        method: 'GET',
        url: `/api/v1/sandboxes/${id}/files?path=/workspace/nope`,
      });
      expect(res.statusCode).toBe(404);
      expect((await h.cp.store.sandboxes.get(id))?.state).toBe('running');
    } finally {
      await h.close();
    }
  });
});
