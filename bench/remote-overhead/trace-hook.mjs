// Opt-in instrumentation for `bench/remote-overhead/run.mjs --trace`: loaded into the control
// plane and the worker with `node --import`, it times HTTP work from Node's diagnostics channels
// and writes one JSON line per finished request to stderr, next to the process's own log lines:
//
//   {"msg":"bench trace","kind":"server","path":"/rpc","end_ms":1.1,"ms":1.23,"at":<epoch ms>}
//       an HTTP request served by this process (node:http), from its headers being parsed to the
//       handler's `res.end()` call (end_ms) and to the response's 'finish' (ms, which waits for
//       the socket write callback and so also for whatever else the event loop does first): the
//       worker's RPC server, or the control plane's API;
//   {"msg":"bench trace","kind":"client","path":"/rpc","headers_ms":1.1,"ms":1.3,"at":<epoch ms>}
//       a request this process made with undici (the control plane's worker-RPC client; the
//       worker's heartbeats), from its creation to its response headers and to its last byte.
//
// `at` is the request's start on the shared wall clock (timeOrigin + now, sub-ms), so the bench
// can attribute each line to the measurement block it started in. Nothing here changes what the process
// does; it only observes. Not loaded unless --trace is given.

import dc from 'node:diagnostics_channel';
import { ServerResponse } from 'node:http';
import { performance } from 'node:perf_hooks';

const round = (x) => Math.round(x * 1000) / 1000;

/** `t0` is the request's start on this process's performance clock. */
function emit(t0, rec) {
  const start = performance.timeOrigin + t0;
  process.stderr.write(`${JSON.stringify({ msg: 'bench trace', ...rec, at: round(start) })}\n`);
}

const served = new WeakMap();
dc.subscribe('http.server.request.start', ({ request }) => {
  served.set(request, { t0: performance.now(), end: undefined });
});
// The first end() call of a response: when the handler is done and hands the last bytes over.
const end = ServerResponse.prototype.end;
ServerResponse.prototype.end = function tracedEnd(...args) {
  const s = this.req === undefined ? undefined : served.get(this.req);
  if (s !== undefined && s.end === undefined) s.end = performance.now() - s.t0;
  return end.apply(this, args);
};
dc.subscribe('http.server.response.finish', ({ request, response }) => {
  const s = served.get(request);
  if (s === undefined) return;
  served.delete(request);
  const path = (request.url ?? '').split('?')[0];
  emit(s.t0, {
    kind: 'server',
    path,
    status: response.statusCode,
    end_ms: s.end === undefined ? null : round(s.end),
    ms: round(performance.now() - s.t0),
  });
});

const made = new WeakMap();
dc.subscribe('undici:request:create', ({ request }) => {
  made.set(request, { t0: performance.now(), headers: undefined });
});
dc.subscribe('undici:request:headers', ({ request }) => {
  const m = made.get(request);
  if (m !== undefined) m.headers = performance.now() - m.t0;
});
dc.subscribe('undici:request:trailers', ({ request }) => {
  const m = made.get(request);
  if (m === undefined) return;
  made.delete(request);
  const path = (request.path ?? '').split('?')[0];
  emit(m.t0, {
    kind: 'client',
    path,
    headers_ms: m.headers === undefined ? null : round(m.headers),
    ms: round(performance.now() - m.t0),
  });
});
