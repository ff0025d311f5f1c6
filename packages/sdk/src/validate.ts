/**
 * Light shape checks of response bodies: enough to turn a wrong server (or a proxy's page)
 * into a {@link MalformedResponseError} instead of `undefined` surfacing later.
 */
import { MalformedResponseError } from './errors.js';

export type Json = Record<string, unknown>;

export function isRecord(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export function malformed(what: string, value: unknown): MalformedResponseError {
  let shown: string;
  try {
    shown = JSON.stringify(value) ?? String(value);
  } catch {
    shown = String(value);
  }
  return new MalformedResponseError(`malformed response: ${what}; got ${shown.slice(0, 160)}`, {
    code: 'MALFORMED_RESPONSE',
    status: 200,
  });
}

/** An object whose listed fields have the listed `typeof` types. */
export function expectObject<T>(
  value: unknown,
  what: string,
  fields: Record<string, 'string' | 'number' | 'boolean' | 'object'>,
): T {
  if (!isRecord(value)) throw malformed(`${what} must be a JSON object`, value);
  for (const [k, t] of Object.entries(fields)) {
    const v = value[k];
    if (t === 'object' ? !isRecord(v) && !Array.isArray(v) : typeof v !== t) {
      throw malformed(`${what}.${k} must be a ${t}`, value);
    }
  }
  return value as T;
}

export function expectArray<T>(value: unknown, what: string, each: (v: unknown) => T): T[] {
  if (!Array.isArray(value)) throw malformed(`${what} must be a JSON array`, value);
  return value.map(each);
}

export function expectSandboxInfo<T>(value: unknown): T {
  return expectObject<T>(value, 'sandbox', { id: 'string', state: 'string' });
}

export function expectString(value: unknown, what: string): string {
  if (typeof value !== 'string') throw malformed(`${what} must be a string`, value);
  return value;
}
