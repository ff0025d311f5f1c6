import { describe, expect, test } from 'vitest';
import {
  ConnectionStatements,
  PG_NAMED_STATEMENT_MAX_CHARS,
  PG_STATEMENT_NAME_PREFIX,
  isStalePreparedStatement,
  statementName,
} from './named-statements.js';

describe('statementName', () => {
  test('names data statements by their text: same text, same name; other text, other name', () => {
    const a = 'select * from "sandboxes" where "id" = $1';
    const name = statementName(a);
    expect(name).toMatch(new RegExp(`^${PG_STATEMENT_NAME_PREFIX}[0-9a-f]{32}$`));
    expect(statementName(`${a}`)).toBe(name);
    expect(statementName(`${a} `)).not.toBe(name);
    for (const text of [
      'insert into "audit_events" ("actor") values ($1)',
      'update "leases" set "holder_id" = $1',
      'delete from "workers" where "id" = $1',
      'with x as (select 1) select * from x',
      '  SELECT 1',
    ]) {
      expect(statementName(text)).toBeDefined();
    }
    // Names fit PostgreSQL's identifier length (63 bytes).
    expect((name ?? '').length).toBeLessThanOrEqual(63);
  });

  test('leaves transaction control, settings, DDL and very long texts unnamed', () => {
    for (const text of [
      'begin',
      'commit',
      'rollback',
      'start transaction isolation level serializable',
      'set statement_timeout = 0',
      'reset statement_timeout',
      'create table "t" ("id" text)',
      'alter table "t" add column "x" text',
      'selection', // not the word select
      `select 1 ${' '.repeat(PG_NAMED_STATEMENT_MAX_CHARS)}`,
    ]) {
      expect(statementName(text)).toBeUndefined();
    }
  });
});

describe('ConnectionStatements', () => {
  test('names at most its cap of distinct statements; known ones keep their name', () => {
    const c = new ConnectionStatements(3);
    const texts = [1, 2, 3, 4].map((i) => `select ${i}`);
    const names = texts.map((t) => c.nameFor(t));
    expect(names.slice(0, 3).every((n) => n !== undefined)).toBe(true);
    expect(names[3]).toBeUndefined();
    expect(c.size).toBe(3);
    expect(c.nameFor(texts[0] ?? '')).toBe(names[0]);
    expect(c.nameFor('begin')).toBeUndefined();
    expect(c.size).toBe(3);
  });

  test('follows transactions, so a failed statement is re-run only outside one', () => {
    const c = new ConnectionStatements();
    expect(c.canRetry).toBe(true);
    c.nameFor('begin');
    expect(c.canRetry).toBe(false);
    c.nameFor('select 1');
    c.nameFor('savepoint "a"');
    c.nameFor('rollback to "a"');
    expect(c.canRetry).toBe(false);
    c.nameFor('commit');
    expect(c.canRetry).toBe(true);
    c.nameFor('start transaction isolation level repeatable read');
    expect(c.canRetry).toBe(false);
    c.nameFor('rollback');
    expect(c.canRetry).toBe(true);
  });
});

test('isStalePreparedStatement matches only PostgreSQL’s cached-plan error', () => {
  const err = (code: string, message: string): Error => Object.assign(new Error(message), { code });
  expect(isStalePreparedStatement(err('0A000', 'cached plan must not change result type'))).toBe(
    true,
  );
  expect(isStalePreparedStatement(err('0A000', 'something else unsupported'))).toBe(false);
  expect(isStalePreparedStatement(err('42P01', 'cached plan must not change result type'))).toBe(
    false,
  );
  expect(isStalePreparedStatement('cached plan')).toBe(false);
  expect(isStalePreparedStatement(null)).toBe(false);
});
