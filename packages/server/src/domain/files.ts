/** A file or directory inside a sandbox, as the API reports it. */
export interface FileEntry {
  /** Absolute in-sandbox path, e.g. `/workspace/a.txt`. */
  path: string;
  name: string;
  size: number;
  /** Octal permission bits, e.g. `0644`. */
  mode: string;
  isDir: boolean;
  modTimeMs: number;
}

/** Parses an octal mode string (`644`, `0755`, `0o600`) or throws a message. */
export function parseFileMode(raw: string): number {
  const s = raw.trim().replace(/^0o/i, '');
  if (!/^[0-7]{1,4}$/.test(s)) throw new Error(`"${raw}" is not an octal file mode such as 0644`);
  return parseInt(s, 8);
}

export function formatFileMode(mode: number): string {
  return `0${(mode & 0o7777).toString(8).padStart(3, '0')}`;
}

/** Normalises an in-sandbox path; relative paths are taken from `/workspace`. */
export function normalizeSandboxPath(raw: string): string | { problem: string } {
  if (raw.length === 0) return { problem: 'path is required' };
  if (raw.includes('\0')) return { problem: 'path must not contain NUL bytes' };
  const abs = raw.startsWith('/') ? raw : `/workspace/${raw}`;
  const out: string[] = [];
  for (const seg of abs.split('/')) {
    if (seg === '' || seg === '.') continue;
    if (seg === '..') {
      if (out.length === 0) return { problem: 'path escapes the sandbox root' };
      out.pop();
      continue;
    }
    out.push(seg);
  }
  return `/${out.join('/')}`;
}
