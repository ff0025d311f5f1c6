#!/usr/bin/env node
// The app "inside the sandbox" for bench/preview-gateway: a minimal node HTTP server on
// 127.0.0.1 (a free port) plus a WebSocket echo on /ws. With the mock provider a sandbox's port N
// is 127.0.0.1:N on the host, so this process is what the preview gateway proxies to.
//
//   GET /            200, a fixed 64-byte text body (keep-alive)
//   upgrade /ws      WebSocket; every message is sent back unchanged
//
// Prints one line `{"port":N}` on stdout once listening; exits on SIGTERM or when stdin ends.

import { createServer } from 'node:http';
import { WebSocketServer } from 'ws';

const BODY = 'stacyvm preview gateway bench: hello from the sandbox app .....\n';

const server = createServer((req, res) => {
  if (req.url === '/' && req.method === 'GET') {
    res.writeHead(200, {
      'content-type': 'text/plain; charset=utf-8',
      'content-length': Buffer.byteLength(BODY),
    });
    res.end(BODY);
    return;
  }
  res.writeHead(404, { 'content-length': 0 });
  res.end();
});
server.keepAliveTimeout = 60_000;
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
server.on('upgrade', (req, socket, head) => {
  if (req.url !== '/ws') {
    socket.end('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  });
});
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ port: server.address().port })}\n`);
});
const stop = () => {
  for (const c of wss.clients) c.terminate();
  server.closeAllConnections();
  server.close(() => process.exit(0));
};
process.once('SIGTERM', stop);
process.stdin.resume();
process.stdin.once('end', stop);
