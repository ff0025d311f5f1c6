/**
 * Named prepared statements for the store's node-postgres connections.
 *
 * The store runs a small, fixed set of statements (Kysely compiles each
 * operation to the same text every time). Sent unnamed, PostgreSQL parses,
 * analyses and plans every one of them again; sent with a name, each is
 * parsed once per connection and then only bound and executed. The name is
 * derived from the text, so the same text always gets the same name and two
 * texts never share one.
 *
 * Bounded: only data statements (select, insert, update, delete, with) up to
 * {@link PG_NAMED_STATEMENT_MAX_CHARS} are named, and at most
 * {@link PG_NAMED_STATEMENTS_PER_CONNECTION} per connection; anything else
 * (transaction control, `set`, DDL, a statement past the cap) goes unnamed
 * as before.
 */
import { createHash } from 'node:crypto';

/** Longest statement text that is prepared under a name. */
export const PG_NAMED_STATEMENT_MAX_CHARS = 4096;
/** Named statements one connection prepares at most; later new texts run unnamed. */
export const PG_NAMED_STATEMENTS_PER_CONNECTION = 256;
/** Prefix of every statement name this module gives out. */
export const PG_STATEMENT_NAME_PREFIX = 'stacy_';

/** Texts whose names were computed, so the hash runs once per text, not per query. */
const NAME_CACHE_MAX = 1024;
const nameCache = new Map<string, string | undefined>();

const NAMEABLE = /^\s*(select|insert|update|delete|with)\b/i;

/**
 * The statement name for `text`, or undefined when it is not one to prepare
 * (not a data statement, or longer than {@link PG_NAMED_STATEMENT_MAX_CHARS}).
 */
export function statementName(text: string): string | undefined {
  const known = nameCache.get(text);
  if (known !== undefined || nameCache.has(text)) return known;
  const name =
    text.length <= PG_NAMED_STATEMENT_MAX_CHARS && NAMEABLE.test(text)
      ? PG_STATEMENT_NAME_PREFIX + createHash('sha256').update(text).digest('hex').slice(0, 32)
      : undefined;
  if (nameCache.size < NAME_CACHE_MAX) nameCache.set(text, name);
  return name;
}

/**
 * "cached plan must not change result type": a named `select *` or
 * `returning *` whose table gained or lost columns since it was prepared
 * (another process migrated the schema). The statement had no effect.
 */
export function isStalePreparedStatement(err: unknown): boolean {
  if (typeof err !== 'object' || err === null) return false;
  const { code, message } = err as { code?: unknown; message?: unknown };
  return code === '0A000' && typeof message === 'string' && /cached plan/i.test(message);
}

/**
 * What one connection has prepared, and whether it is inside a transaction
 * (where a failed statement cannot simply be run again).
 */
export class ConnectionStatements {
  private readonly prepared = new Set<string>();
  private inTransaction = false;

  constructor(private readonly maxNamed: number = PG_NAMED_STATEMENTS_PER_CONNECTION) {}

  /** Named statements this connection has been asked to prepare. */
  get size(): number {
    return this.prepared.size;
  }

  /** Whether a statement that failed could be re-run on its own (not in a transaction). */
  get canRetry(): boolean {
    return !this.inTransaction;
  }

  /**
   * The name to send `text` under on this connection, or undefined to send
   * it unnamed. Also follows transaction control statements.
   */
  nameFor(text: string): string | undefined {
    const name = statementName(text);
    if (name === undefined) {
      this.track(text);
      return undefined;
    }
    if (this.prepared.has(name)) return name;
    if (this.prepared.size >= this.maxNamed) return undefined;
    this.prepared.add(name);
    return name;
  }

  private track(text: string): void {
    const head = text.trimStart().slice(0, 20).toLowerCase();
    if (head.startsWith('begin') || head.startsWith('start transaction')) {
      this.inTransaction = true;
    } else if (
      head.startsWith('commit') ||
      head.startsWith('end') ||
      head.startsWith('abort') ||
      (head.startsWith('rollback') && !/^rollback\s+to\b/.test(head))
    ) {
      this.inTransaction = false;
    }
  }
}
