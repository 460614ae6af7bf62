/**
 * Ceiling for sync: a raw uWebSockets.js relay that forwards every message to the other sockets of
 * the same path, keeping nothing (no document, no persistence). Uses uWS's built-in pub/sub, which
 * is the fastest fan-out it offers.
 */
import uWS from 'uWebSockets.js';
import { announce, baselineArgs } from './args.ts';

interface PeerData {
  room: string;
}

const { port } = baselineArgs();
const app = uWS.App();
app.ws<PeerData>('/*', {
  compression: uWS.DISABLED,
  maxPayloadLength: 16 * 1024 * 1024,
  idleTimeout: 0,
  upgrade: (res, req, context) => {
    res.upgrade<PeerData>(
      { room: req.getUrl() },
      req.getHeader('sec-websocket-key'),
      req.getHeader('sec-websocket-protocol'),
      req.getHeader('sec-websocket-extensions'),
      context,
    );
  },
  open: (ws) => {
    ws.subscribe(ws.getUserData().room);
  },
  message: (ws, message, isBinary) => {
    // publish from the socket skips the sender itself.
    ws.publish(ws.getUserData().room, message, isBinary);
  },
});
app.listen('127.0.0.1', port, (listenSocket) => {
  if (listenSocket === false) throw new Error('cannot listen');
  announce(uWS.us_socket_local_port(listenSocket));
});
process.on('SIGTERM', () => process.exit(0));
