// The benchmarks' HTTP client: one undici keep-alive Pool per origin (127.0.0.1 only), requests
// tagged with a bench-chosen x-request-id so the server's log lines can be matched exactly.

import { Pool } from 'undici';
import { BenchError } from './server.mjs';

/**
 * @param {string} origin  e.g. http://127.0.0.1:41234
 * @param {object} o
 * @param {number} o.connections  keep-alive connections at most (requests in flight)
 * @param {{exited: boolean, exitInfo: string}} o.server  the process behind `origin`: a call
 *   fails at once when it has exited
 * @param {number} [o.timeoutMs]  headers and body timeout of every request (undici's default else)
 * @param {Record<string,string>} [o.headers]  sent with every request (API keys)
 */
export function makeClient(origin, o) {
  const host = new URL(origin).hostname;
  if (host !== '127.0.0.1') throw new BenchError(`${origin}: this bench only talks to 127.0.0.1`);
  const pool = new Pool(origin, {
    connections: o.connections,
    pipelining: 1,
    ...(o.timeoutMs === undefined ? {} : { headersTimeout: o.timeoutMs, bodyTimeout: o.timeoutMs }),
  });
  const server = o.server;
  let seq = 0;

  function headersFor(phase, body, extra) {
    const headers = { ...o.headers, ...extra, 'x-request-id': `bench.${phase}.${++seq}` };
    if (body !== undefined) headers['content-type'] = 'application/json';
    return headers;
  }

  async function send(method, path, headers, body) {
    if (server.exited) throw new BenchError(`server exited during the run (${server.exitInfo})`);
    try {
      return await pool.request({
        method,
        path,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      throw new BenchError(`${method} ${path} failed: ${err.message}`);
    }
  }

  /**
   * One request; the parsed JSON body (or the raw text with `{ text: true }`). Throws BenchError
   * on transport failure or a status other than `expectStatus`.
   */
  async function request(phase, method, path, body, expectStatus, { text = false, headers } = {}) {
    const res = await send(method, path, headersFor(phase, body, headers), body);
    const raw = await res.body.text();
    if (res.statusCode !== expectStatus) {
      throw new BenchError(
        `${method} ${path} answered ${res.statusCode}, expected ${expectStatus}: ${raw.slice(0, 300)}`,
      );
    }
    if (text) return raw;
    try {
      return raw.length === 0 ? undefined : JSON.parse(raw);
    } catch {
      throw new BenchError(
        `${method} ${path} answered a body that is not JSON: ${raw.slice(0, 300)}`,
      );
    }
  }

  const call = (phase, method, path, body, expectStatus) =>
    request(phase, method, path, body, expectStatus);

  /**
   * A request whose body is read as NDJSON as it arrives: `onLine(obj, msSinceStart)` is called
   * for every line. Resolves to the number of lines once the body has ended.
   */
  async function streamNdjson(phase, method, path, body, onLine, t0 = performance.now()) {
    const res = await send(method, path, headersFor(phase, body), body);
    if (res.statusCode !== 200) {
      const raw = await res.body.text();
      throw new BenchError(`${method} ${path} answered ${res.statusCode}: ${raw.slice(0, 300)}`);
    }
    let pending = '';
    let lines = 0;
    for await (const chunk of res.body) {
      const at = performance.now() - t0;
      pending += chunk.toString('utf8');
      let nl;
      while ((nl = pending.indexOf('\n')) !== -1) {
        const line = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        if (line.trim() === '') continue;
        let obj;
        try {
          obj = JSON.parse(line);
        } catch {
          throw new BenchError(`${method} ${path} streamed a line that is not JSON: ${line}`);
        }
        lines++;
        onLine(obj, at);
      }
    }
    return lines;
  }

  return { pool, call, request, streamNdjson };
}
