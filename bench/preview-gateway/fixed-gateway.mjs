#!/usr/bin/env node
// The proxy-only reference of bench/preview-gateway: the built preview gateway
// (packages/server/dist/preview/gateway.js, the same code `stacyvm serve` runs) with a resolver
// that answers at once with 127.0.0.1:{port}, no store and no provider behind it. Comparing it
// with the control plane's gateway splits what the gateway adds into proxying and resolving.
//
//   node fixed-gateway.mjs APP_PORT   prints `{"port":N}` once listening on 127.0.0.1;
//                                     exits on SIGTERM or when stdin ends.

import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { DIST } from '../lib/server.mjs';

const built = (file) => import(pathToFileURL(join(DIST, file)).href);
const { createPreviewGateway } = await built('preview/gateway.js');
const { silentLogger } = await built('domain/logger.js');

const appPort = Number(process.argv[2]);
if (!Number.isInteger(appPort) || appPort < 1 || appPort > 65535) {
  process.stderr.write('usage: fixed-gateway.mjs APP_PORT\n');
  process.exit(2);
}
const upstream = { kind: 'direct', host: '127.0.0.1', port: appPort };
const gateway = createPreviewGateway({
  domains: () => ['localhost'],
  resolve: async () => upstream,
  resolveCached: () => upstream,
  publicScheme: 'http',
  logger: silentLogger,
});
const { port } = await gateway.listen('127.0.0.1', 0);
process.stdout.write(`${JSON.stringify({ port })}\n`);
const stop = () => void gateway.close(0).then(() => process.exit(0));
process.once('SIGTERM', stop);
process.stdin.resume();
process.stdin.once('end', stop);
