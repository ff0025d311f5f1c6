import { describe, expect, it } from 'vitest';
import { defaultConfig } from '../config/schema.js';
import { storeOptions } from './control-plane.js';

describe('storeOptions', () => {
  it('maps the database section, named prepared statements on by default', () => {
    const c = defaultConfig();
    expect(storeOptions(c)).toEqual({
      driver: 'sqlite',
      path: 'stacyvm.db',
      dsn: '',
      maxOpenConns: 10,
      statementTimeoutMs: 30_000,
      preparedStatements: true,
    });
    c.database.driver = 'postgresql';
    c.database.dsn = 'postgres://db.example/stacyvm';
    c.database.prepared_statements = false;
    c.database.statement_timeout = '0s';
    expect(storeOptions(c)).toMatchObject({
      driver: 'postgres',
      dsn: 'postgres://db.example/stacyvm',
      statementTimeoutMs: 0,
      preparedStatements: false,
    });
  });
});
