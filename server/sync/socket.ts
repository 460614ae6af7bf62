import type { Logger } from 'pino';
import { ERROR_CATALOGUE, type ErrorCode } from '../../shared/errors.ts';
import { CLOSE_CODES } from '../../shared/sync-protocol.ts';
import type { Principal } from '../http/route.ts';
import type { HttpRequest, HttpResponse, TemplatedApp } from '../http/uws.ts';
import type { DocName } from './repo.ts';
import type { Connection, DocRegistry, SyncSocket } from './registry.ts';
import { MalformedMessageError, encodeAwarenessMessage, encodeSyncStep1, encodeSyncStep2, readIncomingMessage } from './protocol.ts';
import * as awarenessProtocol from 'y-protocols/awareness';

export interface SyncSocketOptions {
  registry: DocRegistry;
  logger: Logger;
  authenticate: (token: string) => Principal | null;
  /** Which of the user's documents `{doc}` names, or null when it is none of theirs. */
  resolveDoc: (userId: string, docParam: string) => DocName | null;
  maxMessageBytes: number;
  maxConnectionsPerUser: number;
  /** Bytes a slow reader may fall behind before it is disconnected (it resyncs on reconnect). */
  maxBackpressureBytes: number;
}

const TOKEN_PATTERN = /^pxc_[A-Za-z0-9_-]{10,200}$/;

/**
 * `GET /sync/{doc}`: the WebSocket sync channel. Auth happens in the HTTP upgrade, before any
 * socket exists: a bad token is a 401 and someone else's document a 404, never a 101.
 */
export function mountSyncSocket(app: TemplatedApp, options: SyncSocketOptions): void {
  const { registry, logger } = options;
  app.ws<Connection>('/sync/*', {
    // uWS drops a frame over its limit without a close code; with headroom, a message a little over
    // ours gets the clear 4413 below instead (which also stops stock clients from resending it).
    maxPayloadLength: options.maxMessageBytes * 2,
    // uWS skips (drops) publishes to a subscriber past its limit, which would leave that reader
    // silently behind. Its limit is set above ours so the registry closes slow readers first
    // (they resync on reconnect); uWS's own close is only the last resort.
    maxBackpressure: options.maxBackpressureBytes * 2,
    closeOnBackpressureLimit: 1,
    idleTimeout: 120,
    sendPingsAutomatically: true,
    compression: 0,

    upgrade: (res: HttpResponse, req: HttpRequest, context) => {
      // Everything below is synchronous, so the response is always answered before an abort could
      // be observed; uWS still wants the handler.
      res.onAborted(() => {});
      // Copied now: `req` is invalid once this function returns.
      const url = req.getUrl();
      const key = req.getHeader('sec-websocket-key');
      const protocolHeader = req.getHeader('sec-websocket-protocol');
      const extensions = req.getHeader('sec-websocket-extensions');
      const authorization = req.getHeader('authorization');
      const queryToken = req.getQuery('token') ?? '';
      const ack = req.getQuery('ack') === '1';

      const offered = protocolHeader.split(',').map((p) => p.trim()).filter((p) => p !== '');
      const protocolToken = offered.find((p) => TOKEN_PATTERN.test(p));
      const bearer = /^Bearer[ ]+(\S+)$/i.exec(authorization)?.[1];
      const token = bearer ?? protocolToken ?? queryToken;
      const principal = token ? options.authenticate(token) : null;
      if (!principal) {
        refuse(res, 'unauthorized', 'A valid token is required (Authorization header, Sec-WebSocket-Protocol or ?token=)');
        return;
      }
      const docName = options.resolveDoc(principal.userId, safeDecode(url.slice('/sync/'.length)));
      if (docName === null) {
        // Someone else's document and one that does not exist look the same.
        refuse(res, 'not_found', 'No such document');
        return;
      }
      const conn: Connection = {
        userId: principal.userId,
        sessionId: principal.sessionId,
        docName,
        ack,
        doc: undefined,
        closed: false,
        received: 0,
        stored: 0,
        awarenessIds: new Set(),
      };
      // A browser that offered protocols must get one of them back; prefer one that is not the token.
      const chosen = offered.find((p) => p !== protocolToken) ?? protocolToken ?? '';
      res.cork(() => res.upgrade(conn, key, chosen, extensions, context));
    },

    open: (ws: SyncSocket) => {
      const conn = ws.getUserData();
      if (registry.connectionsOf(conn.userId) >= options.maxConnectionsPerUser) {
        ws.end(CLOSE_CODES.TOO_MANY_CONNECTIONS, 'Too many sync connections for this user');
        return;
      }
      let doc;
      try {
        doc = registry.attach(ws);
      } catch (error) {
        logger.error({ err: error, userId: conn.userId, doc: conn.docName }, 'could not load a document');
        ws.end(CLOSE_CODES.INTERNAL_ERROR, 'Could not load the document');
        return;
      }
      // As the reference server: our state vector (so the client sends what we lack) and who is here.
      ws.cork(() => {
        ws.send(encodeSyncStep1(doc.ydoc), true);
        const states = [...doc.awareness.getStates().keys()];
        if (states.length > 0) ws.send(encodeAwarenessMessage(doc.awareness, states), true);
      });
    },

    message: (ws: SyncSocket, message: ArrayBuffer) => {
      const conn = ws.getUserData();
      const doc = conn.doc;
      if (!doc) return;
      if (message.byteLength > options.maxMessageBytes) {
        ws.end(CLOSE_CODES.MESSAGE_TOO_BIG, `Message over ${options.maxMessageBytes} bytes`);
        return;
      }
      // uWS reuses `message` after this callback: keep a copy (also what gets stored and relayed).
      const bytes = new Uint8Array(message.slice(0));
      let incoming;
      try {
        incoming = readIncomingMessage(bytes);
      } catch (error) {
        if (!(error instanceof MalformedMessageError)) throw error;
        logger.info({ userId: conn.userId, doc: conn.docName, reason: error.message }, 'closing a socket that sent a malformed message');
        ws.end(CLOSE_CODES.MALFORMED_MESSAGE, 'Malformed message');
        return;
      }
      switch (incoming.kind) {
        case 'step1':
          ws.send(encodeSyncStep2(doc.ydoc, incoming.stateVector), true);
          return;
        case 'update':
          // A step 2 is relayed as a plain update: readers must not take it for their own sync.
          registry.receiveUpdate(ws, incoming.update, incoming.isStep2 ? null : bytes);
          return;
        case 'awareness':
          try {
            awarenessProtocol.applyAwarenessUpdate(doc.awareness, incoming.update, ws);
          } catch {
            ws.end(CLOSE_CODES.MALFORMED_MESSAGE, 'Malformed awareness message');
          }
          return;
        case 'query-awareness':
          ws.send(encodeAwarenessMessage(doc.awareness, [...doc.awareness.getStates().keys()]), true);
          return;
        case 'auth':
          return;
      }
    },

    close: (ws: SyncSocket) => {
      registry.detach(ws);
    },
  });
}

function refuse(res: HttpResponse, code: ErrorCode, message: string): void {
  const { status, error } = ERROR_CATALOGUE[code];
  res.cork(() => {
    res.writeStatus(`${status} ${error}`);
    res.writeHeader('Content-Type', 'application/json; charset=utf-8');
    res.end(JSON.stringify({ error, code, message }), true);
  });
}

function safeDecode(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    return segment;
  }
}
