/**
 * The sync channel speaks the y-websocket protocol: a varUint message type (the four below, as
 * y-websocket numbers them), then the message; the sync steps inside a MESSAGE_SYNC are
 * y-protocols' own (`y-protocols/sync`). Extensions stock clients don't know are opt-in by query
 * parameter, so a stock client never sees them.
 */
export const MESSAGE_SYNC = 0;
export const MESSAGE_AWARENESS = 1;
export const MESSAGE_AUTH = 2;
export const MESSAGE_QUERY_AWARENESS = 3;
/**
 * Opt-in with `?ack=1`: `[100, varUint n]` tells the client that the first `n` update-carrying
 * messages (sync step 2 or update) it sent on this connection are stored durably. `n` is
 * cumulative per connection, so a lost or merged ack never matters: the latest one is the truth.
 */
export const MESSAGE_ACK = 100;

/**
 * Close codes of the sync socket. 4400-4499 tell stock clients to stop retrying for good, so they
 * are used only where a retry cannot help; the others invite a reconnect.
 */
export const CLOSE_CODES = {
  /** Storage failed while handling this connection's updates (none of them was acknowledged): retry later. */
  INTERNAL_ERROR: 1011,
  /** The server is shutting down or restarting: reconnect (to the next process). */
  SERVICE_RESTART: 1012,
  /** The server cannot take this connection now (open-file limit, storage busy): retry shortly. */
  TRY_AGAIN_LATER: 1013,
  /** A message could not be decoded, or an update was refused (see the reason): resending it cannot work. */
  MALFORMED_MESSAGE: 4400,
  /** The session behind the token ended (logout, password change). Needs a new token. */
  SESSION_REVOKED: 4401,
  /**
   * Cluster mode: a document the user does not have, found out after the upgrade (the node the
   * device reached does not serve the user, so only the owner could check it); elsewhere an
   * unknown document is refused at the upgrade with 404.
   */
  DOCUMENT_NOT_FOUND: 4404,
  /** A message over the size limit. */
  MESSAGE_TOO_BIG: 4413,
  /** This connection fell too far behind on reading: reconnect and resync by state vector. */
  SLOW_READER: 4503,
  /** The user has too many sync connections open right now. */
  TOO_MANY_CONNECTIONS: 4529,
} as const;
