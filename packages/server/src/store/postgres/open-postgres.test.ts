import { describe, expect, test } from 'vitest';
import { StacyError } from '../../domain/errors.js';
import {
  classifyPostgresError,
  createPostgresStore,
  describePostgresDsn,
} from './open-postgres.js';

const pgError = (code: string, message = 'x'): Error => Object.assign(new Error(message), { code });

describe('classifyPostgresError', () => {
  test.each([
    ['23505', 'unique-violation'],
    ['40001', 'retry'],
    ['40P01', 'retry'],
    ['55P03', 'busy'],
    ['57P01', 'unavailable'],
    ['57014', 'unavailable'],
    ['28P01', 'unavailable'],
    ['3D000', 'unavailable'],
    ['08006', 'unavailable'],
    ['53300', 'unavailable'],
    ['ECONNREFUSED', 'unavailable'],
    ['42P01', 'other'],
    ['22021', 'other'],
  ])('SQLSTATE/errno %s is %s', (code, kind) => {
    expect(classifyPostgresError(pgError(code))).toBe(kind);
  });

  test('reads node-postgres connection messages and dual-stack AggregateErrors', () => {
    expect(classifyPostgresError(new Error('Connection terminated unexpectedly'))).toBe(
      'unavailable',
    );
    expect(classifyPostgresError(new Error('timeout exceeded when trying to connect'))).toBe(
      'unavailable',
    );
    const refused = new AggregateError([pgError('ECONNREFUSED'), pgError('ECONNREFUSED')], '');
    expect(classifyPostgresError(refused)).toBe('unavailable');
    expect(classifyPostgresError('nonsense')).toBe('other');
  });
});

describe('describePostgresDsn', () => {
  test('names host, port and database but keeps the password out', () => {
    const t = describePostgresDsn(
      'postgres://stacy:s%40cret-pw@db.example:6543/stacyvm?sslmode=require',
    );
    expect(t).toEqual({
      host: 'db.example',
      port: '6543',
      database: 'stacyvm',
      user: 'stacy',
      description: 'postgres database "stacyvm" on db.example:6543',
    });
    expect(JSON.stringify(t)).not.toContain('cret');
  });

  test('defaults the port and database, and reads a socket directory from ?host=', () => {
    expect(describePostgresDsn('postgresql://u@h').description).toBe(
      'postgres database "u" on h:5432',
    );
    expect(describePostgresDsn('postgres:///app?host=/run/postgresql').description).toBe(
      'postgres database "app" on /run/postgresql (port 5432)',
    );
  });

  test('refuses what is not a postgres URL as BAD_REQUEST without echoing it', () => {
    for (const dsn of ['', 'host=db password=hunter2-xyz', 'mysql://u:hunter2-xyz@db/x']) {
      let err: unknown;
      try {
        describePostgresDsn(dsn);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(StacyError);
      const se = err as StacyError;
      expect(se.code).toBe('BAD_REQUEST');
      expect(se.details?.[0]?.field).toBe('database.dsn');
      expect(se.message).not.toContain('hunter2');
    }
  });
});

test('a closed local port fails the open with UNAVAILABLE and no password', async () => {
  // Port 1 on loopback is never a Postgres server; the refusal is immediate.
  const err: unknown = await createPostgresStore({
    dsn: 'postgres://stacy:Very-Secret-1@127.0.0.1:1/stacyvm',
    connectTimeoutMs: 2000,
  }).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(StacyError);
  const se = err as StacyError;
  expect(se.code).toBe('UNAVAILABLE');
  expect(se.message).toMatch(/^cannot connect to postgres database "stacyvm" on 127\.0\.0\.1:1: /);
  expect(se.message).not.toContain('Very-Secret-1');
  expect(String((se.cause as Error).message)).not.toContain('Very-Secret-1');
});
