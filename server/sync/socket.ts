import * as Y from 'yjs';
import type { Logger } from 'pino';
import { ERROR_CATALOGUE, type ErrorCode } from '../../shared/errors.ts';
import { MalformedMessageError, type SyncMessage, encodeAwareness, encodeSyncStep2, readMessage } from '../../shared/sync-codec.ts';
import { CLOSE_CODES } from '../../shared/sync-protocol.ts';
import { isSnowflake } from '../../shared/snowflake.ts';
import { AppError } from '../core/app-error.ts';
import type { Principal } from '../core/principal.ts';
import { UserMovingError, type Placement } from '../core/placement.ts';
import type { HttpRequest, HttpResponse, TemplatedApp } from '../http/uws.ts';
import { isClusterUnavailable, isRetryableStorageError } from '../storage/errors.ts';
import { AwarenessRefused } from './awareness.ts';
import { newConnection, type Connection, type SyncSocket } from './document.ts';
import { docKey, type DocRegistry } from './registry.ts';
import type { DocName } from './repo.ts';
import type { DecodedUpdate } from './update-check.ts';

export interface SyncSocketOptions {
  registry: DocRegistry;
  logger: Logger;
  /** The session of a token, or null; a promise when the directory has to be read. */
  authenticate: (token: string) => Principal | null | Promise<Principal | null>;
  /** Which of the user's documents `{doc}` names, or null when it is none of theirs. */
  resolveDoc: (userId: string, docParam: string) => DocName | null;
  nextRequestId: () => string;
  maxMessageBytes: number;
  maxConnectionsPerUser: number;
  /** Bytes a slow reader may fall behind before it is disconnected (it resyncs on reconnect). */
  maxBackpressureBytes: number;
  /**
   * Cluster mode: a socket for a user another node owns is accepted here and relayed to the owner
   * (`edge`), which serves it; the document is never loaded here.
   */
  cluster?: { placement: Placement; edge: EdgeRelay };
}

/** Cluster mode, on an edge node: where the frames of sockets relayed to their owner go. */
export interface EdgeRelay {
  open(ws: SyncSocket): void;
  frame(ws: SyncSocket, bytes: Uint8Array): void;
  closed(ws: SyncSocket): void;
}

/**
 * What the sync channel offers the cluster: `sessions` serves sockets another node holds (on the
 * owner, exactly as its own), `publishRelayed` delivers an owner's frame to the sockets relayed
 * from this node (on the edge).
 */
export interface SyncChannel {
  sessions: {
    open(ws: SyncSocket): void;
    receive(ws: SyncSocket, bytes: Uint8Array): void;
    close(ws: SyncSocket): void;
  };
  /** Sends `frame` to every socket this node relays for the document, except `sender`. */
  publishRelayed(docKey: string, frame: Uint8Array, sender: SyncSocket | undefined): void;
  /** Sends `frame` to every socket of this node subscribed to `topic`. */
  publishLocal(topic: string, frame: Uint8Array): void;
}

/** The uWS topic of the sockets an edge node relays for one document. */
const relayedTopic = (docKey: string) => `relayed:${docKey}`;

const TOKEN_PATTERN = /^pxc_[A-Za-z0-9_-]{10,200}$/;
/** What uWS tells the close handler when it dropped a message over `maxPayloadLength` itself. */
const UWS_TOO_BIG = 'Received too big message';
/** How long a connection that was cut for an oversized message is remembered (see `OversizeMemory`). */
const OVERSIZE_MEMORY_MS = 10 * 60_000;
const OVERSIZE_MEMORY_MAX = 10_000;

/**
 * `GET /sync/{doc}`: the WebSocket sync channel. Auth happens in the HTTP upgrade, before any
 * socket exists: a bad token is a 401 and someone else's document a 404, never a 101. Every uWS
 * handler contains its own failures: a bug while serving one socket closes that socket (1011),
 * never the process.
 */
export function mountSyncSocket(app: TemplatedApp, options: SyncSocketOptions): SyncChannel {
  const { registry, logger } = options;
  const oversize = new OversizeMemory();
  app.ws<Connection>('/sync/*', {
    // uWS drops a message over its limit by cutting the TCP connection (1006, no close frame). With
    // headroom, a message a little over ours gets a clear 4413 below instead; beyond the headroom,
    // `OversizeMemory` answers the client's next connection with 4413.
    maxPayloadLength: options.maxMessageBytes * 2,
    // uWS skips (drops) publishes to a subscriber past its limit, which would leave that reader
    // silently behind. Its limit is set above ours so the documents close slow readers first (they
    // resync on reconnect); uWS's own close is only the last resort.
    maxBackpressure: options.maxBackpressureBytes * 4,
    closeOnBackpressureLimit: 1,
    idleTimeout: 120,
    sendPingsAutomatically: true,
    compression: 0,

    upgrade: (res: HttpResponse, req: HttpRequest, context) => {
      // Before anything else: an upgrade that waits for the directory must know when the client left.
      const upgrading: Upgrading = { aborted: false };
      res.onAborted(() => {
        upgrading.aborted = true;
      });
      const requestId = options.nextRequestId();
      try {
        upgrade(res, req, context, requestId, upgrading);
      } catch (error) {
        refuseFor(res, requestId, error);
      }
    },

    open: (ws: SyncSocket) => {
      const conn = ws.getUserData();
      try {
        open(ws, conn);
      } catch (error) {
        fail(ws, conn, error, 'opening a sync socket failed');
      }
    },

    message: (ws: SyncSocket, message: ArrayBuffer) => {
      const conn = ws.getUserData();
      try {
        if (message.byteLength > options.maxMessageBytes) {
          end(ws, conn, CLOSE_CODES.MESSAGE_TOO_BIG, `Message over ${options.maxMessageBytes} bytes`);
          return;
        }
        // uWS reuses `message` after this callback: keep a copy (also what gets stored and relayed).
        const bytes = new Uint8Array(message.slice(0));
        if (conn.held !== undefined) hold(ws, conn, bytes);
        else if (conn.remote !== undefined) options.cluster?.edge.frame(ws, bytes);
        else receive(ws, conn, bytes);
      } catch (error) {
        fail(ws, conn, error, 'handling a sync message failed');
      }
    },

    drain: (ws: SyncSocket) => {
      // A catch-up (sync step 2) that has left the buffer no longer excuses a backlog.
      if (ws.getBufferedAmount() === 0) ws.getUserData().catchUp = 0;
    },

    close: (ws: SyncSocket, code: number, message: ArrayBuffer) => {
      const conn = ws.getUserData();
      try {
        if (code === 1006 && Buffer.from(message).toString() === UWS_TOO_BIG) oversize.remember(conn);
        if (conn.remote !== undefined) {
          conn.closed = true;
          options.cluster?.edge.closed(ws);
        } else {
          registry.detach(ws);
        }
      } catch (error) {
        logger.error({ err: error, conn: conn.id }, 'closing a sync socket failed');
      }
    },
  });

  function refuseFor(res: HttpResponse, requestId: string, error: unknown): void {
    if (error instanceof AppError) {
      refuse(res, requestId, error.code, error.message);
    } else if (isClusterUnavailable(error)) {
      logger.warn({ err: error, requestId }, 'sync upgrade refused: the cluster cannot be reached');
      refuse(res, requestId, 'service_unavailable', 'The cluster cannot be reached right now; retry shortly');
    } else if (isRetryableStorageError(error)) {
      logger.warn({ err: error, requestId }, 'sync upgrade refused: storage busy');
      refuse(res, requestId, 'service_unavailable', 'Storage is busy; retry shortly');
    } else {
      logger.error({ err: error, requestId }, 'sync upgrade failed');
      refuse(res, requestId, 'internal_error', `Could not open the sync channel (request ${requestId})`);
    }
  }

  function upgrade(res: HttpResponse, req: HttpRequest, context: Parameters<HttpResponse['upgrade']>[4], requestId: string, upgrading: Upgrading): void {
    // Copied now: `req` is invalid once this function returns.
    const url = req.getUrl();
    const key = req.getHeader('sec-websocket-key');
    const protocolHeader = req.getHeader('sec-websocket-protocol');
    const extensions = req.getHeader('sec-websocket-extensions');
    const authorization = req.getHeader('authorization');
    const queryToken = req.getQuery('token') ?? '';
    const ack = req.getQuery('ack') === '1';

    if (registry.refusing) {
      refuse(res, requestId, 'service_unavailable', 'The server is shutting down');
      return;
    }
    const offered = protocolHeader
      .split(',')
      .map((p) => p.trim())
      .filter((p) => p !== '');
    const protocolToken = offered.find((p) => TOKEN_PATTERN.test(p));
    const bearer = /^Bearer[ ]+(\S+)$/i.exec(authorization)?.[1];
    const token = bearer ?? protocolToken ?? queryToken;
    const found = token ? options.authenticate(token) : null;
    const request = { url, key, offered, protocolToken, extensions, ack };
    if (found instanceof Promise) {
      // A token not seen lately: the upgrade waits for the directory (uWS allows it once
      // `onAborted` is set), then answers corked, unless the client has gone meanwhile.
      found.then(
        (principal) => {
          if (upgrading.aborted) return;
          res.cork(() => {
            try {
              accept(res, context, requestId, principal, request);
            } catch (error) {
              refuseFor(res, requestId, error);
            }
          });
        },
        (error: unknown) => {
          if (!upgrading.aborted) refuseFor(res, requestId, error);
        },
      );
      return;
    }
    accept(res, context, requestId, found, request);
  }

  /** The upgrade of a socket whose token was checked: refused (401, 404), or accepted and placed. */
  function accept(
    res: HttpResponse,
    context: Parameters<HttpResponse['upgrade']>[4],
    requestId: string,
    principal: Principal | null,
    request: { url: string; key: string; offered: string[]; protocolToken: string | undefined; extensions: string; ack: boolean },
  ): void {
    const { url, key, offered, protocolToken, extensions, ack } = request;
    if (!principal) {
      refuse(res, requestId, 'unauthorized', 'A valid token is required (Authorization header, Sec-WebSocket-Protocol or ?token=)');
      return;
    }
    const docParam = safeDecode(url.slice('/sync/'.length));
    // Cluster mode: where the user is served is known at once when it is here; otherwise it is
    // looked up while the socket opens (`place`). The upgrade itself never waits.
    const where = options.cluster?.placement.locate(principal.userId) ?? 'here';
    // Only the node serving the user may read their file: elsewhere only the name's form is checked
    // here, and the owner checks the rest once the socket is placed (4404 then).
    const docName = where === 'here' ? options.resolveDoc(principal.userId, docParam) : docNameOfForm(docParam);
    if (docName === null) {
      // Someone else's document and one that does not exist look the same.
      refuse(res, requestId, 'not_found', 'No such document');
      return;
    }
    const conn = newConnection({ id: requestId, userId: principal.userId, sessionId: principal.sessionId, docName, docParam, ack });
    // A browser that offered protocols needs one of them back, but the token must never be echoed
    // into a response header: clients offer `plexichat` beside it (a lone token gets none back).
    const chosen = offered.find((p) => p !== protocolToken) ?? '';
    if (where !== 'here') conn.placing = where;
    res.cork(() => res.upgrade(conn, key, chosen, extensions, context));
  }

  /**
   * Cluster mode, a user this node did not own when the socket came: once it is known where they
   * are served, the socket is served here or relayed to the owner, with the frames that came
   * meanwhile (held, in order). A failure to find out ends it with a code that says retry.
   */
  function place(ws: SyncSocket, conn: Connection, where: Promise<'here' | { node: string }>): void {
    conn.held = [];
    where.then(
      (location) => {
        const held = conn.held ?? [];
        conn.held = undefined;
        if (conn.closed) return;
        // After an await: uWS wants what is written corked.
        ws.cork(() => {
          try {
            if (location === 'here') {
              // This node just took the user: now the document's name can be checked here.
              if (options.resolveDoc(conn.userId, conn.docParam) === null) {
                end(ws, conn, CLOSE_CODES.DOCUMENT_NOT_FOUND, 'No such document');
                return;
              }
              attach(ws, conn);
              for (const bytes of held) receive(ws, conn, bytes);
            } else {
              conn.remote = location.node;
              relay(ws, conn);
              for (const bytes of held) options.cluster?.edge.frame(ws, bytes);
            }
          } catch (error) {
            fail(ws, conn, error, 'opening a sync socket failed');
          }
        });
      },
      (error: unknown) => {
        conn.held = undefined;
        if (conn.closed) return;
        if (!(error instanceof AppError)) logger.error({ err: error, conn: conn.id, userId: conn.userId }, 'finding where a user is served failed');
        const reason =
          error instanceof UserMovingError
            ? 'Your data is moving between servers; reconnect shortly'
            : 'The cluster cannot be reached right now; reconnect shortly';
        ws.cork(() => end(ws, conn, CLOSE_CODES.TRY_AGAIN_LATER, reason));
      },
    );
  }

  /** Keeps a frame that came before the socket was placed; past a bound, the socket ends (retry). */
  function hold(ws: SyncSocket, conn: Connection, bytes: Uint8Array): void {
    const held = conn.held ?? [];
    const total = held.reduce((sum, frame) => sum + frame.byteLength, bytes.byteLength);
    if (total > options.maxMessageBytes * 2) {
      end(ws, conn, CLOSE_CODES.TRY_AGAIN_LATER, 'Server busy; retry shortly');
      return;
    }
    held.push(bytes);
  }

  function open(ws: SyncSocket, conn: Connection): void {
    if (oversize.take(conn)) {
      end(ws, conn, CLOSE_CODES.MESSAGE_TOO_BIG, `The last message was over ${options.maxMessageBytes} bytes`);
      return;
    }
    if (conn.placing !== undefined) {
      place(ws, conn, conn.placing);
      conn.placing = undefined;
      return;
    }
    attach(ws, conn);
  }

  /** Served by the owner, which counts the user's connections and answers through the cluster. */
  function relay(ws: SyncSocket, conn: Connection): void {
    ws.subscribe(relayedTopic(docKey(conn.userId, conn.docName)));
    options.cluster?.edge.open(ws);
  }

  /** Served here: loads the document (or refuses, retryable). */
  function attach(ws: SyncSocket, conn: Connection): void {
    if (registry.connectionsOf(conn.userId) >= options.maxConnectionsPerUser) {
      end(ws, conn, CLOSE_CODES.TOO_MANY_CONNECTIONS, 'Too many sync connections for this user');
      return;
    }
    try {
      registry.attach(ws);
    } catch (error) {
      if (isRetryableStorageError(error)) {
        logger.warn({ err: error, conn: conn.id, userId: conn.userId }, 'no room to load a document; the client will retry');
        end(ws, conn, CLOSE_CODES.TRY_AGAIN_LATER, 'Server busy; retry shortly');
        return;
      }
      throw error;
    }
  }

  /** One frame of a socket served here; `bytes` is the receiver's to keep. */
  function receive(ws: SyncSocket, conn: Connection, bytes: Uint8Array): void {
    const doc = conn.doc;
    if (!doc || conn.closed) return;
    let incoming: SyncMessage;
    try {
      incoming = readMessage(bytes);
    } catch (error) {
      if (!(error instanceof MalformedMessageError)) throw error;
      malformed(ws, conn, error.message);
      return;
    }
    switch (incoming.type) {
      case 'sync-step1': {
        let step2: Uint8Array;
        try {
          step2 = encodeSyncStep2(doc.ydoc, incoming.stateVector);
        } catch (error) {
          malformed(ws, conn, `unreadable state vector (${messageOf(error)})`);
          return;
        }
        conn.catchUp += step2.byteLength;
        ws.send(step2, true);
        return;
      }
      case 'sync-step2':
      case 'sync-update': {
        let decoded: DecodedUpdate;
        try {
          decoded = Y.decodeUpdate(incoming.update);
        } catch (error) {
          malformed(ws, conn, `unreadable update (${messageOf(error)})`);
          return;
        }
        // A step 2 is relayed as a plain update (readers must not take it for their own sync); an
        // update frame is relayed as it came.
        registry.receiveUpdate(ws, incoming.update, decoded, incoming.type === 'sync-update' ? bytes : null);
        return;
      }
      case 'awareness':
        try {
          doc.receiveAwareness(ws, incoming.update);
        } catch (error) {
          if (!(error instanceof AwarenessRefused)) throw error;
          logger.info({ conn: conn.id, userId: conn.userId, reason: error.message }, 'refused an awareness update');
          end(ws, conn, error.closeCode, error.message);
        }
        return;
      case 'query-awareness': {
        const states = doc.awareness.encodeAll();
        if (states !== null) ws.send(encodeAwareness(states), true);
        return;
      }
      case 'auth':
      case 'ack':
        // Sent by servers; from a client they mean nothing.
        return;
      case 'unknown':
        malformed(ws, conn, `unknown message type ${incoming.messageType}`);
        return;
    }
  }

  return {
    sessions: {
      open(ws) {
        const conn = ws.getUserData();
        try {
          open(ws, conn);
        } catch (error) {
          fail(ws, conn, error, 'opening a relayed sync socket failed');
        }
      },
      receive(ws, bytes) {
        const conn = ws.getUserData();
        try {
          if (bytes.byteLength > options.maxMessageBytes) end(ws, conn, CLOSE_CODES.MESSAGE_TOO_BIG, `Message over ${options.maxMessageBytes} bytes`);
          else receive(ws, conn, bytes);
        } catch (error) {
          fail(ws, conn, error, 'handling a relayed sync message failed');
        }
      },
      close(ws) {
        try {
          registry.detach(ws);
        } catch (error) {
          logger.error({ err: error, conn: ws.getUserData().id }, 'closing a relayed sync socket failed');
        }
      },
    },
    publishRelayed(key, frame, sender) {
      if (sender !== undefined) sender.publish(relayedTopic(key), frame, true);
      else app.publish(relayedTopic(key), frame, true);
    },
    publishLocal(topic, frame) {
      app.publish(topic, frame, true);
    },
  };

  function malformed(ws: SyncSocket, conn: Connection, reason: string): void {
    logger.info({ conn: conn.id, userId: conn.userId, doc: conn.docName, reason }, 'closing a socket that sent a malformed message');
    end(ws, conn, CLOSE_CODES.MALFORMED_MESSAGE, 'Malformed message');
  }

  function fail(ws: SyncSocket, conn: Connection, error: unknown, what: string): void {
    logger.error({ err: error, conn: conn.id, userId: conn.userId, doc: conn.docName }, what);
    end(ws, conn, CLOSE_CODES.INTERNAL_ERROR, 'Internal error; reconnect later');
  }
}

/** Ends a socket once; its close handler runs inside `end()`. */
function end(ws: SyncSocket, conn: Connection, code: number, reason: string): void {
  if (conn.closed) return;
  conn.refused = conn.refused || (code >= 4400 && code < 4500);
  ws.end(code, reason.slice(0, 120));
}

/**
 * Remembers connections uWS cut for a message far over the limit (it gives no close code, so a
 * stock client would reconnect and resend it forever) and answers their next connection, same
 * session and document, with 4413, which tells the client to stop. Bounded in size and time.
 */
class OversizeMemory {
  private readonly cut = new Map<string, number>();

  remember(conn: Connection): void {
    const key = `${conn.sessionId}:${conn.docName}`;
    this.cut.delete(key);
    this.cut.set(key, Date.now() + OVERSIZE_MEMORY_MS);
    if (this.cut.size > OVERSIZE_MEMORY_MAX) {
      const oldest = this.cut.keys().next().value;
      if (oldest !== undefined) this.cut.delete(oldest);
    }
  }

  /** True (once) when this connection's previous one was cut for an oversized message. */
  take(conn: Connection): boolean {
    const key = `${conn.sessionId}:${conn.docName}`;
    const until = this.cut.get(key);
    if (until === undefined) return false;
    this.cut.delete(key);
    return until > Date.now();
  }
}

/** Whether the client of a pending upgrade went away (uWS's `onAborted`). */
interface Upgrading {
  aborted: boolean;
}

function refuse(res: HttpResponse, requestId: string, code: ErrorCode, message: string): void {
  const { status, error } = ERROR_CATALOGUE[code];
  res.cork(() => {
    res.writeStatus(`${status} ${error}`);
    res.writeHeader('X-Request-Id', requestId);
    res.writeHeader('Access-Control-Allow-Origin', '*');
    res.writeHeader('Cache-Control', 'no-store');
    res.writeHeader('Content-Type', 'application/json; charset=utf-8');
    if (code === 'unauthorized') res.writeHeader('WWW-Authenticate', 'Bearer');
    if (code === 'service_unavailable') res.writeHeader('Retry-After', '1');
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

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** The document a name can be, judged by its form alone (`settings`, or an id that may be the notes channel's). */
function docNameOfForm(docParam: string): DocName | null {
  if (docParam === 'settings') return 'settings';
  return isSnowflake(docParam) ? 'notes' : null;
}
