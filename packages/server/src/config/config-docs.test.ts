import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, test } from 'vitest';
import { UPDATE_DOCS_COMMAND, renderConfigReference } from './config-docs.js';
import { CONFIG_KEYS } from './schema.js';

const DOC_PATH = fileURLToPath(new URL('../../../../docs/configuration.md', import.meta.url));

describe('configuration reference', () => {
  test('docs/configuration.md is exactly what the schema renders', () => {
    const rendered = renderConfigReference();
    if (process.env['UPDATE_DOCS'] === '1') {
      mkdirSync(dirname(DOC_PATH), { recursive: true });
      writeFileSync(DOC_PATH, rendered);
    }
    let onDisk: string;
    try {
      onDisk = readFileSync(DOC_PATH, 'utf8');
    } catch {
      throw new Error(`${DOC_PATH} is missing; run: ${UPDATE_DOCS_COMMAND}`);
    }
    expect(onDisk, `docs/configuration.md is stale; run: ${UPDATE_DOCS_COMMAND}`).toBe(rendered);
  });

  test('lists every key with its env var and default, and marks secrets', () => {
    const doc = renderConfigReference();
    expect(doc).toContain(UPDATE_DOCS_COMMAND);
    for (const key of CONFIG_KEYS) {
      const row = doc.split('\n').find((line) => line.startsWith(`| \`${key.path}\` |`));
      expect(row, key.path).toBeDefined();
      expect(row).toContain(`\`${key.envVar}\``);
      expect(row?.includes('**Secret**'), key.path).toBe(key.secret);
    }
    expect(doc).toContain('| `server.port` | integer 1–65535 | `7423` | `STACYVM_SERVER_PORT` |');
    expect(doc).toContain('| `server.host` | string (non-empty) | `"127.0.0.1"` |');
  });
});
