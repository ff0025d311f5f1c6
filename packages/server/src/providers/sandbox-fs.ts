/**
 * Path confinement for providers whose sandboxes are directories on the host
 * (the mock provider). An in-sandbox path `/workspace/x` maps to
 * `<root>/workspace/x`; every mapped path is checked, through symlinks, to
 * stay under the root, and raw fs errors become catalog errors that name the
 * in-sandbox path (never the host path).
 */
import { lstat, readlink, realpath } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, resolve, sep } from 'node:path';
import { StacyError, invalidField } from '../domain/errors.js';
import { normalizeSandboxPath } from '../domain/files.js';

/** The message of every refusal of a path that leaves the sandbox. */
export const ESCAPE_PROBLEM = 'path escapes the sandbox root';

/** Linux gives up after 40 links; so do we. */
const MAX_SYMLINK_HOPS = 40;

/** An in-sandbox path and the host path it was resolved to. */
export interface ConfinedPath {
  /** Normalised absolute in-sandbox path, e.g. `/workspace/a.txt`. */
  sandboxPath: string;
  /** Host path under the root, with symlinks resolved as far as {@link ConfineOptions} asks. */
  hostPath: string;
}

export interface ConfineOptions {
  /**
   * Resolve a symlink in the final component too. True for operations that
   * act on the link's target (read, write, list, stat, chmod); false for
   * those that act on the entry itself (delete, move).
   */
  followFinal: boolean;
  /** Request field named in a BAD_REQUEST (`path`, `from`, `to`, `workdir`, `pattern`). */
  field?: string;
}

/** Whether host path `p` is `root` or lies under it (both absolute and normalised). */
export function isWithin(root: string, p: string): boolean {
  return p === root || p.startsWith(root.endsWith(sep) ? root : root + sep);
}

/** The in-sandbox path a host path under `realRoot` stands for. */
export function toSandboxPath(realRoot: string, hostPath: string): string {
  const rel = hostPath.slice(realRoot.length).split(sep).filter(Boolean).join('/');
  return `/${rel}`;
}

/** The `code` of a Node system error (`ENOENT`, …), if it has one. */
export function errnoCode(err: unknown): string | undefined {
  if (typeof err === 'object' && err !== null && 'code' in err) {
    return typeof err.code === 'string' ? err.code : undefined;
  }
  return undefined;
}

/**
 * Turns a raw fs error into a catalog error naming the in-sandbox path.
 * ENOENT is NOT_FOUND, permission errors FORBIDDEN, shape mistakes
 * (ENOTDIR, EISDIR, ELOOP, …) BAD_REQUEST; the rest INTERNAL_ERROR with the
 * raw error as `cause`.
 */
export function fsError(err: unknown, sandboxPath: string): StacyError {
  if (err instanceof StacyError) return err;
  switch (errnoCode(err)) {
    case 'ENOENT':
      return new StacyError('NOT_FOUND', `no such file: ${sandboxPath}`, { cause: err });
    case 'ENOTDIR':
      return new StacyError('BAD_REQUEST', `not a directory: ${sandboxPath}`, { cause: err });
    case 'EISDIR':
      return new StacyError('BAD_REQUEST', `${sandboxPath} is a directory`, { cause: err });
    case 'EEXIST':
      return new StacyError('CONFLICT', `already exists: ${sandboxPath}`, { cause: err });
    case 'ENOTEMPTY':
      return new StacyError('CONFLICT', `directory not empty: ${sandboxPath}`, { cause: err });
    case 'EACCES':
    case 'EPERM':
    case 'EROFS':
      return new StacyError('FORBIDDEN', `permission denied: ${sandboxPath}`, { cause: err });
    case 'ELOOP':
      return new StacyError('BAD_REQUEST', `too many levels of symbolic links: ${sandboxPath}`, {
        cause: err,
      });
    case 'ENAMETOOLONG':
      return new StacyError('BAD_REQUEST', `path too long: ${sandboxPath}`, { cause: err });
    case 'EINVAL':
      return new StacyError('BAD_REQUEST', `invalid operation on ${sandboxPath}`, { cause: err });
    case 'ENOSPC':
    case 'EDQUOT':
      return new StacyError('RESOURCE_LIMIT', `no space left writing ${sandboxPath}`, {
        cause: err,
        retryable: false,
      });
    case undefined:
    default:
      return new StacyError('INTERNAL_ERROR', `file operation on ${sandboxPath} failed`, {
        cause: err,
      });
  }
}

/**
 * Resolves `hostPath` (lexically under `realRoot`) the way the kernel would,
 * refusing any step that lands outside the root: the deepest existing
 * ancestor is realpath'd, and a dangling symlink is followed by hand, since
 * writing through it would create its target.
 */
async function confineHost(
  realRoot: string,
  hostPath: string,
  followFinal: boolean,
  sandboxPath: string,
  field: string,
  hops: number,
): Promise<string> {
  if (!isWithin(realRoot, hostPath)) throw invalidField(field, ESCAPE_PROBLEM);
  if (hostPath === realRoot) return realRoot;
  if (!followFinal) {
    const parent = await confineHost(realRoot, dirname(hostPath), true, sandboxPath, field, hops);
    return join(parent, basename(hostPath));
  }
  let real: string;
  try {
    real = await realpath(hostPath);
  } catch (err) {
    const code = errnoCode(err);
    if (code === 'ELOOP') throw fsError(err, sandboxPath);
    if (code !== 'ENOENT' && code !== 'ENOTDIR') throw fsError(err, sandboxPath);
    const parent = await confineHost(realRoot, dirname(hostPath), true, sandboxPath, field, hops);
    const here = join(parent, basename(hostPath));
    const st = await lstat(here).catch(() => undefined);
    if (st?.isSymbolicLink() !== true) return here;
    if (hops >= MAX_SYMLINK_HOPS) {
      throw new StacyError('BAD_REQUEST', `too many levels of symbolic links: ${sandboxPath}`);
    }
    const target = await readlink(here).catch((e: unknown) => {
      throw fsError(e, sandboxPath);
    });
    const next = isAbsolute(target) ? resolve(target) : resolve(parent, target);
    return confineHost(realRoot, next, true, sandboxPath, field, hops + 1);
  }
  if (!isWithin(realRoot, real)) throw invalidField(field, ESCAPE_PROBLEM);
  return real;
}

/**
 * Maps an in-sandbox path (relative paths are taken from `/workspace`) to a
 * host path under `realRoot`, which must itself be a realpath. Throws
 * BAD_REQUEST for an empty path, a `..` above `/`, or a path that resolves
 * outside the root through symlinks.
 *
 * The check and the later use are not atomic: a process in the sandbox could
 * swap a symlink in between. That is acceptable only because the providers
 * using this helper give commands host access anyway; it guards API paths,
 * not hostile code.
 */
export async function confinePath(
  realRoot: string,
  rawPath: string,
  opts: ConfineOptions,
): Promise<ConfinedPath> {
  const field = opts.field ?? 'path';
  const normalized = normalizeSandboxPath(rawPath);
  if (typeof normalized !== 'string') {
    if (normalized.problem === 'path is required') {
      throw invalidField(field, `${field} is required`);
    }
    throw invalidField(field, normalized.problem);
  }
  // join() would keep the trailing slash of `/`, and `<root>/` is not `<root>`.
  const lexical = normalized === '/' ? realRoot : join(realRoot, normalized);
  const hostPath = await confineHost(realRoot, lexical, opts.followFinal, normalized, field, 0);
  return { sandboxPath: normalized, hostPath };
}
