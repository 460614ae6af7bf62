/**
 * The edge side of sync relaying on its own (server/cluster/edge-sockets.ts): a relayed socket whose
 * owner never answers its opening is told to reconnect. A lost answer is known only to the node
 * that could not send it, so the edge bounds the wait itself; the clock is mocked.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { NodeBus } from '../server/cluster/bus.ts';
import { EdgeSockets, OPEN_ANSWER_TIMEOUT_MS, OWNER_SILENT } from '../server/cluster/edge-sockets.ts';
import type { NodeMessage } from '../server/cluster/wire.ts';
import { newConnection, type SyncSocket } from '../server/sync/document.ts';
import { CLOSE_CODES } from '../shared/sync-protocol.ts';

/** A stand-in socket: records what the edge sends it and how it ends it. */
function fakeSocket(id: string) {
  const conn = { ...newConnection({ id, userId: '1', sessionId: '2', docName: 'notes', docParam: '3', ack: false }), remote: 'owner' };
  const sent: Uint8Array[] = [];
  const ended: { code: number; reason: string }[] = [];
  const ws = {
    getUserData: () => conn,
    cork: (fn: () => void) => fn(),
    send: (bytes: Uint8Array) => {
      sent.push(bytes);
      return 1;
    },
    end: (code: number, reason: string) => {
      ended.push({ code, reason });
      conn.closed = true;
    },
  } as unknown as SyncSocket;
  return { ws, sent, ended };
}

function edge(): { sockets: EdgeSockets; sent: NodeMessage[] } {
  const sent: NodeMessage[] = [];
  const bus = { self: 'edge', send: (_node: string, message: NodeMessage) => sent.push(message) } as unknown as NodeBus;
  return { sockets: new EdgeSockets(bus, () => undefined), sent };
}

test('a relayed socket whose owner never answers its opening is ended with 1013 once the bound passes; one that was answered is not', (t) => {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const { sockets, sent } = edge();
  const silent = fakeSocket('r1');
  const answered = fakeSocket('r2');
  sockets.open(silent.ws);
  sockets.open(answered.ws);
  assert.deepEqual(
    sent.map((message) => message.kind),
    ['sync-open', 'sync-open'],
  );
  sockets.receive({ kind: 'sync-send', conn: 'edge/r2', bytes: new Uint8Array([0, 0, 1, 0]) });
  t.mock.timers.tick(OPEN_ANSWER_TIMEOUT_MS - 1);
  assert.deepEqual(silent.ended, [], 'not before the bound');
  t.mock.timers.tick(1);
  assert.deepEqual(silent.ended, [{ code: CLOSE_CODES.TRY_AGAIN_LATER, reason: OWNER_SILENT }]);
  assert.deepEqual(answered.ended, []);
  assert.equal(answered.sent.length, 1, "the owner's answer was delivered");
});

test('a relayed socket closed by its device before the owner answered leaves no timer behind', (t) => {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const { sockets, sent } = edge();
  const socket = fakeSocket('r3');
  sockets.open(socket.ws);
  socket.ws.getUserData().closed = true;
  sockets.closed(socket.ws);
  assert.equal(sent.at(-1)?.kind, 'sync-close');
  t.mock.timers.tick(OPEN_ANSWER_TIMEOUT_MS);
  assert.deepEqual(socket.ended, []);
  assert.equal(sockets.size, 0);
});
