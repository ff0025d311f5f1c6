import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import type { LightMyRequestResponse } from 'fastify';
import { createControlPlane } from '../../src/cli/control-plane.js';
import type { ControlPlane } from '../../src/cli/control-plane.js';
import { defaultConfig } from '../../src/config/schema.js';
import type { StacyConfig } from '../../src/config/schema.js';

export interface Harness {
  cp: ControlPlane;
  config: StacyConfig;
  dir: string;
  request(opts: {
    method: 'GET' | 'POST' | 'PUT' | 'DELETE' | 'OPTIONS';
    url: string;
    body?: unknown;
    headers?: Record<string, string>;
    rawBody?: string | Buffer;
  }): Promise<LightMyRequestResponse>;
  spawn(body?: Record<string, unknown>): Promise<string>;
  close(): Promise<void>;
}

/**
 * A real control plane (SQLite file in a temp dir, mock provider in a temp
 * dir) driven through Fastify's inject: everything but the socket is real.
 */
export async function startHarness(tweak?: (c: StacyConfig) => void): Promise<Harness> {
  const dir = mkdtempSync(join(tmpdir(), 'stacyvm-test-'));
  const config = defaultConfig();
  config.database.path = join(dir, 'stacyvm.db');
  config.providers.mock.base_dir = join(dir, 'mock');
  config.logging.level = 'silent';
  // These tests drive the mock provider; Docker has its own suites.
  config.providers.docker.enabled = false;
  tweak?.(config);
  const cp = await createControlPlane({ config, logger: pino({ level: 'silent' }) });
  await cp.app.ready();
  const h: Harness = {
    cp,
    config,
    dir,
    request: async ({ method, url, body, headers, rawBody }) =>
      cp.app.inject({
        method,
        url,
        headers: {
          ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
          ...headers,
        },
        ...(rawBody !== undefined
          ? { payload: rawBody }
          : body !== undefined
            ? { payload: JSON.stringify(body) }
            : {}),
      }),
    spawn: async (body = {}) => {
      const res = await h.request({
        method: 'POST',
        url: '/api/v1/sandboxes',
        body,
        headers: authHeaders(config),
      });
      if (res.statusCode !== 201) throw new Error(`spawn failed: ${res.statusCode} ${res.body}`);
      return res.json<{ id: string }>().id;
    },
    close: async () => {
      await cp.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return h;
}

function authHeaders(config: StacyConfig): Record<string, string> {
  if (config.auth.admin_api_key !== '') return { 'x-api-key': config.auth.admin_api_key };
  if (config.auth.api_key !== '') return { 'x-api-key': config.auth.api_key };
  return {};
}
