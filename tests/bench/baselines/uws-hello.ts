/** Ceiling for REST: raw uWebSockets.js answering every GET with a small constant JSON body. */
import uWS from 'uWebSockets.js';
import { announce, baselineArgs } from './args.ts';

const BODY = JSON.stringify({ hello: 'world' });
const { port } = baselineArgs();
const app = uWS.App();
app.get('/*', (res) => {
  res.writeHeader('content-type', 'application/json; charset=utf-8').end(BODY);
});
app.listen('127.0.0.1', port, (listenSocket) => {
  if (listenSocket === false) throw new Error('cannot listen');
  announce(uWS.us_socket_local_port(listenSocket));
});
process.on('SIGTERM', () => process.exit(0));
