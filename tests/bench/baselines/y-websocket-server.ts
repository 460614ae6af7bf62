/**
 * Baseline: @y/websocket-server 0.1.1 as its own bin wires it (ws + setupWSConnection), on loopback.
 * With YPERSISTENCE set in its environment (the harness does that for the LevelDB variant) the
 * library stores every update in LevelDB through y-leveldb; we only add a clean shutdown so that
 * LevelDB's pending writes land before a restart.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { WebSocketServer } from 'ws';
import { getPersistence, setupWSConnection } from '@y/websocket-server/utils';
import { announce, baselineArgs } from './args.ts';

const { port } = baselineArgs();
const wss = new WebSocketServer({ noServer: true });
const server = http.createServer((_request, response) => {
  response.writeHead(200, { 'content-type': 'text/plain' });
  response.end('okay');
});
wss.on('connection', setupWSConnection);
server.on('upgrade', (request, socket, head) => {
  wss.handleUpgrade(request, socket, head, (ws) => wss.emit('connection', ws, request));
});
server.listen(port, '127.0.0.1', () => announce((server.address() as AddressInfo).port));

interface Closable {
  provider?: { destroy?: () => Promise<void> };
}

process.on('SIGTERM', () => {
  for (const client of wss.clients) client.terminate();
  server.close();
  // The persistence object carries the y-leveldb instance as `provider` (missing from its types).
  const persistence = getPersistence() as Closable | null;
  const closing = persistence?.provider?.destroy?.() ?? Promise.resolve();
  closing.then(
    () => process.exit(0),
    () => process.exit(1),
  );
});
