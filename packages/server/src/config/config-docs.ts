/**
 * Renders docs/configuration.md from the schema, so the reference cannot
 * drift from what the loader accepts (a test compares the two).
 */
import { stringify } from 'yaml';
import {
  CONFIG_KEYS,
  CONFIG_SECTIONS,
  SECRET_FILE_KEYS,
  defaultConfig,
  type ConfigKeyInfo,
} from './schema.js';
import { CONFIG_ENV_VAR, CWD_CONFIG_FILE, REDACTED } from './load-config.js';
import { LINT_CHECKS } from './lint-config.js';

/** The command that rewrites docs/configuration.md from {@link renderConfigReference}. */
export const UPDATE_DOCS_COMMAND = 'UPDATE_DOCS=1 npx vitest run --project unit config-docs';

function cell(text: string): string {
  return text.replace(/\|/g, '\\|').replace(/\n/g, ' ');
}

function code(text: string): string {
  return `\`${text}\``;
}

function typeOf(key: ConfigKeyInfo): string {
  switch (key.kind) {
    case 'string':
      return key.minLength !== undefined && key.minLength > 0 ? 'string (non-empty)' : 'string';
    case 'duration':
      return `duration (${key.durationBound === 'positive' ? '> 0' : '≥ 0'}${key.durationMax === undefined ? '' : `, ≤ ${key.durationMax}`})`;
    case 'enum':
      return `one of ${(key.values ?? []).map(code).join(', ')}`;
    case 'boolean':
      return 'boolean';
    case 'string-list':
      return 'list of strings';
    case 'integer':
    case 'number': {
      const noun = key.kind;
      if (key.minimum !== undefined && key.maximum !== undefined) {
        return `${noun} ${key.minimum}–${key.maximum}`;
      }
      if (key.minimum !== undefined) return `${noun} ≥ ${key.minimum}`;
      return noun;
    }
  }
}

function defaultOf(key: ConfigKeyInfo): string {
  return code(
    typeof key.default === 'string' || Array.isArray(key.default)
      ? JSON.stringify(key.default)
      : String(key.default),
  );
}

function descriptionOf(key: ConfigKeyInfo): string {
  let text = key.description;
  if (key.secret) {
    const file = SECRET_FILE_KEYS[key.path];
    text += ` **Secret**: printed as ${code(REDACTED)}`;
    text += file === undefined ? '.' : `; can be read from ${code(file)} instead.`;
  }
  return text;
}

function keyTable(keys: readonly ConfigKeyInfo[]): string[] {
  const rows = [
    '| Key | Type | Default | Env var | Description |',
    '| --- | --- | --- | --- | --- |',
  ];
  for (const key of keys) {
    rows.push(
      `| ${code(key.path)} | ${cell(typeOf(key))} | ${cell(defaultOf(key))} | ${code(key.envVar)} | ${cell(descriptionOf(key))} |`,
    );
  }
  return rows;
}

/** The full configuration reference as Markdown (the content of docs/configuration.md). */
export function renderConfigReference(): string {
  const secretKeys = CONFIG_KEYS.filter((k) => k.secret);
  const lines: string[] = [
    '# Configuration reference',
    '',
    '<!-- Generated from packages/server/src/config/schema.ts by renderConfigReference(); do not edit by hand. -->',
    `<!-- Regenerate with: ${UPDATE_DOCS_COMMAND} -->`,
    '',
    'StacyVM reads one YAML file plus `STACYVM_*` environment variables. Key names and duration',
    'syntax are those of the Go original, so existing `stacyvm.yaml` files keep working.',
    '',
    '## Where configuration comes from',
    '',
    'The first of these that is given or exists is used; files are never merged:',
    '',
    '1. `--config FILE` (the file must exist).',
    `2. ${code(CONFIG_ENV_VAR)} (the file must exist).`,
    `3. ${code(`./${CWD_CONFIG_FILE}`)} in the working directory.`,
    '4. `~/.stacyvm/config.yaml`.',
    '',
    'With none of them, the defaults below apply. Environment variables are applied on top and beat',
    'the file.',
    '',
    '## Environment variables',
    '',
    'Every key has one: `STACYVM_` followed by the key upper-cased with `.` replaced by `_`',
    '(`server.port` → `STACYVM_SERVER_PORT`). Values are parsed by the key’s type: integers and numbers',
    'in decimal, booleans as `true`/`false`/`1`/`0`, lists as comma-separated values or a JSON array',
    '(`STACYVM_SERVER_CORS_ALLOWED_ORIGINS=https://a.example,https://b.example`). An empty variable',
    'counts as unset. A value that does not parse is an error naming the variable and the key.',
    '',
    '## Durations',
    '',
    'Durations use Go syntax: a sequence of numbers with units `ns`, `us`, `ms`, `s`, `m`, `h`, such as',
    '`30s`, `5m`, `1h30m` or `1.5h` (there is no `d`). Negative durations are refused; an empty string',
    'means the default.',
    '',
    '## Secrets',
    '',
    `Secret keys: ${secretKeys.map((k) => code(k.path)).join(', ')}. Each single-value secret can instead be read from`,
    'a file named by its `*_file` key (the lists have no file form; content trimmed; an empty or unreadable file is an error, and',
    'setting both the key and its file is an error). Relative file paths are resolved against the',
    `working directory. Printed configuration shows secrets as ${code(REDACTED)}, and no error message or`,
    'lint finding contains a secret value.',
    '',
    '## Validation',
    '',
    'Every problem is reported at once, each naming its key, e.g.',
    '`server.port: must be an integer from 1 to 65535`. Besides the per-key types and bounds below:',
    '`defaults.default_exec_timeout` must not exceed `defaults.max_exec_timeout`; `defaults.ttl` must',
    'not exceed `defaults.max_ttl` (unless that is `0s`); each CORS origin is `*` or',
    '`http(s)://host[:port]` without a path; the postgres driver needs a DSN; `providers.default` must',
    'name an enabled provider; `worker.control_plane_url` must be an http(s) URL.',
    '',
    'Keys this implementation does not have (for example `providers.firecracker` or `rate_limit` from',
    'Go-era configs) are not fatal: each is reported as a warning `unknown key "…" ignored`.',
    '',
    '## Bind safety',
    '',
    'The API listens on `127.0.0.1` by default. It refuses to start on a non-loopback address',
    '(anything but 127.0.0.0/8, `::1` and `localhost`) while `auth.api_key` is empty, unless',
    '`server.allow_insecure_bind` is `true`.',
    '',
    '## Keys',
  ];

  for (const section of CONFIG_SECTIONS) {
    const keys = CONFIG_KEYS.filter((k) => k.path.startsWith(`${section.name}.`));
    lines.push('', `### ${section.name}`, '', section.description, '', ...keyTable(keys));
  }

  lines.push(
    '',
    '## Every default as a file',
    '',
    '```yaml',
    stringify(defaultConfig()).trimEnd(),
    '```',
    '',
    '## Lint checks',
    '',
    '`stacyvm config lint [--production]` prints `[pass|warn|fail] <check>: <message>` with a `fix:`',
    'line under each warning or failure, and exits non-zero when any check fails. “P” checks warn',
    'normally and fail with `--production`.',
    '',
    '| Check | Flags |',
    '| --- | --- |',
    ...LINT_CHECKS.map((c) => `| ${code(c.name)} | ${cell(c.description)} |`),
    '',
    '## Differences from the Go original',
    '',
    '- `server.host` defaults to `127.0.0.1` (Go: `0.0.0.0`), and an unauthenticated non-loopback bind',
    '  is refused.',
    '- `STACYVM_CONFIG` is honoured (Go ignored it).',
    '- `providers.default` defaults to `auto`, and the mock provider is enabled by default for',
    '  development; `config lint --production` fails while it is enabled.',
    '- Secret files exist for every single-value secret (`auth.api_key_file`, `auth.admin_api_key_file`,',
    '  `auth.worker_token_file`, `auth.worker_signing_key_file`, `database.dsn_file`).',
    '- `server.max_body_bytes`, `server.shutdown_timeout`, `server.sse_keepalive_interval`,',
    '  `server.reaper_interval` and `server.allow_insecure_bind` are new.',
    '',
  );
  return lines.join('\n');
}
