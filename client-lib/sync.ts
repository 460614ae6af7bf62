import * as Y from 'yjs';
import { encodeSyncStep1, encodeSyncStep2, encodeUpdate, readMessage } from '../shared/sync-codec.ts';
import { CLOSE_CODES } from '../shared/sync-protocol.ts';

/**
 * The part of the WebSocket API the provider uses. Node's `ws` and the browser/React Native
 * global both fit. Handlers take `never` so either's event types are accepted.
 */
export interface WebSocketLike {
  binaryType: string;
  onopen: ((event: never) => void) | null;
  onmessage: ((event: never) => void) | null;
  onclose: ((event: never) => void) | null;
  onerror: ((event: never) => void) | null;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export type SyncStatus = 'offline' | 'connecting' | 'syncing' | 'synced';

export interface BackoffOptions {
  /** First retry waits up to this long (full jitter: a uniform draw in [0, delay]). */
  baseMs?: number;
  /** The delay stops doubling here. */
  capMs?: number;
  /** After a server restart (1012/1013) or a slow-reader cut: retry within this. */
  soonMs?: number;
  /** A socket that has not opened after this long is dropped and retried. */
  connectTimeoutMs?: number;
}

/** Offered beside the token; the server answers with it. */
const SUBPROTOCOL = 'plexichat';

export const DEFAULT_BACKOFF: Required<BackoffOptions> = { baseMs: 500, capMs: 30_000, soonMs: 1_000, connectTimeoutMs: 15_000 };

/** Origin of updates applied from the server, so they are not sent back or counted as local. */
export const REMOTE_ORIGIN = Symbol('plexichat-remote');

export interface SyncProviderOptions {
  doc: Y.Doc;
  url: () => string;
  token: () => string | undefined;
  WebSocket: WebSocketConstructor;
  /**
   * The seq of the newest update in the doc, local or remote (the device's update counter). A
   * step 2 sent now holds everything in the doc that the server's state vector lacks (the server
   * holds in memory exactly what it has stored), so once it is acknowledged the server has stored
   * every local update with a seq up to this. Remote seqs in that range are never pending, so
   * covering them too changes nothing, and no separate count of local seqs is needed.
   */
  currentSeq: () => number;
  onAck: (seq: number) => void;
  onStatus: () => void;
  /** A close code that retrying cannot fix (4400-4499): the provider waits for a new token. */
  onRefused: (code: number, reason: string) => void;
  /**
   * Asked when a socket closed without ever opening. A refused upgrade (bad token) looks like any
   * network failure from a WebSocket, so the app checks the token another way; true = refused.
   */
  isTokenRefused?: () => Promise<boolean>;
  backoff?: BackoffOptions;
  random?: () => number;
  setTimer?: (fn: () => void, ms: number) => unknown;
  clearTimer?: (handle: unknown) => void;
}

/**
 * Our own y-websocket client with the `?ack=1` extension. On every (re)connect both sides
 * exchange state vectors and send only what the other lacks. Local updates are sent only after
 * our sync step 2, so the acknowledgement of message n covers every local seq up to the one
 * recorded for it.
 */
export class SyncProvider {
  readonly #o: SyncProviderOptions;
  readonly #backoff: Required<BackoffOptions>;
  #socket: WebSocketLike | null = null;
  #open = false;
  /** Our step 2 went out on this socket: live updates may follow. */
  #handshakeSent = false;
  /** The server's step 2 arrived on this socket. */
  #serverSynced = false;
  /**
   * coverage[i]: every local update with a seq up to this went out in the first i+1
   * update-carrying messages of this socket, so an ack of i+1 messages acknowledges it.
   */
  #coverage: number[] = [];
  #attempt = 0;
  #timer: unknown = null;
  #connectTimer: unknown = null;
  #wanted = false;
  #refused = false;
  #lastClose: { code: number; reason: string } | null = null;

  constructor(options: SyncProviderOptions) {
    this.#o = options;
    this.#backoff = { ...DEFAULT_BACKOFF, ...options.backoff };
  }

  get connected(): boolean {
    return this.#open;
  }

  /** Open, and the server's state has been received at least once on this socket. */
  get serverSynced(): boolean {
    return this.#open && this.#serverSynced;
  }

  get connecting(): boolean {
    return this.#socket !== null && !this.#open;
  }

  /** The last close code and reason, for apps that show why they are offline. */
  get lastClose(): { code: number; reason: string } | null {
    return this.#lastClose;
  }

  /** Stopped by a permanent refusal until `retry()` (e.g. after a new token). */
  get refused(): boolean {
    return this.#refused;
  }

  connect(): void {
    this.#wanted = true;
    this.#refused = false;
    if (this.#socket === null && this.#timer === null) this.#openSocket();
  }

  /** After a token change: try again now, also after a permanent refusal. */
  retry(): void {
    if (!this.#wanted) return;
    this.#refused = false;
    this.#attempt = 0;
    if (this.#socket !== null) return;
    this.#clearRetry();
    this.#openSocket();
  }

  disconnect(): void {
    this.#wanted = false;
    this.#clearRetry();
    const socket = this.#socket;
    this.#dropSocket();
    socket?.close(1000, 'client disconnect');
    this.#o.onStatus();
  }

  /** Sends one local update if the handshake is done; otherwise the next step 2 carries it. */
  sendLocal(update: Uint8Array, seq: number): void {
    if (!this.#open || !this.#handshakeSent || this.#socket === null) return;
    this.#sendCounted(encodeUpdate(update), seq);
  }

  #openSocket(): void {
    const token = this.#o.token();
    if (token === undefined) {
      this.#refused = true;
      this.#o.onStatus();
      return;
    }
    let socket: WebSocketLike;
    try {
      // The token travels as a subprotocol: browsers cannot set headers, and a query string
      // ends up in access logs. `plexichat` beside it is the protocol the server answers with,
      // so the token itself is never echoed back in a response header.
      socket = new this.#o.WebSocket(this.#o.url(), [SUBPROTOCOL, token]);
    } catch {
      this.#scheduleRetry(false);
      return;
    }
    socket.binaryType = 'arraybuffer';
    this.#socket = socket;
    this.#connectTimer = this.#setTimer(() => {
      if (this.#socket === socket && !this.#open) socket.close(4000, 'connect timeout');
      this.#connectTimer = null;
    }, this.#backoff.connectTimeoutMs);
    socket.onopen = () => {
      if (this.#socket !== socket) return;
      this.#open = true;
      this.#clearConnectTimer();
      socket.send(encodeSyncStep1(this.#o.doc));
      this.#o.onStatus();
    };
    socket.onmessage = (event: { data: unknown }) => {
      if (this.#socket !== socket) return;
      const data = event.data;
      if (!(data instanceof ArrayBuffer) && !ArrayBuffer.isView(data)) return;
      const bytes = data instanceof ArrayBuffer ? new Uint8Array(data) : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
      try {
        this.#handle(bytes);
      } catch {
        // A frame we cannot read: start over with a fresh state-vector exchange.
        socket.close(4000, 'unreadable message');
      }
    };
    socket.onerror = () => {};
    socket.onclose = (event: { code: number; reason: string }) => {
      if (this.#socket !== socket) return;
      const neverOpened = !this.#open;
      this.#lastClose = { code: event.code, reason: String(event.reason ?? '') };
      this.#dropSocket();
      if (!this.#wanted) {
        this.#o.onStatus();
        return;
      }
      const code = event.code;
      if (code >= 4400 && code <= 4499) {
        // The server says retrying cannot help (revoked session, malformed or oversized data):
        // wait until the app gives a new token.
        this.#refused = true;
        this.#o.onStatus();
        this.#o.onRefused(code, this.#lastClose.reason);
        return;
      }
      const soon = code === CLOSE_CODES.SERVICE_RESTART || code === 1013 || code === CLOSE_CODES.SLOW_READER;
      this.#scheduleRetry(soon);
      this.#o.onStatus();
      if (neverOpened && this.#o.isTokenRefused) void this.#checkToken(this.#o.isTokenRefused);
    };
    this.#o.onStatus();
  }

  async #checkToken(isTokenRefused: () => Promise<boolean>): Promise<void> {
    const token = this.#o.token();
    let refused = false;
    try {
      refused = await isTokenRefused();
    } catch {
      return; // unreachable too: keep backing off
    }
    // Only if nothing changed meanwhile (a new token, a disconnect, a socket that got through).
    if (!refused || !this.#wanted || this.#refused || this.#open || this.#o.token() !== token) return;
    this.#clearRetry();
    const socket = this.#socket;
    this.#dropSocket();
    socket?.close(1000, 'token refused');
    this.#refused = true;
    this.#lastClose = { code: CLOSE_CODES.SESSION_REVOKED, reason: 'token refused' };
    this.#o.onStatus();
    this.#o.onRefused(CLOSE_CODES.SESSION_REVOKED, 'token refused');
  }

  #handle(bytes: Uint8Array): void {
    const message = readMessage(bytes);
    switch (message.type) {
      case 'ack': {
        const n = message.count;
        const seq = n > 0 ? this.#coverage[Math.min(n, this.#coverage.length) - 1] : undefined;
        if (seq !== undefined && seq > 0) this.#o.onAck(seq);
        return;
      }
      case 'sync-step1': {
        // Only what the server lacks, however long we were away.
        this.#sendCounted(encodeSyncStep2(this.#o.doc, message.stateVector), this.#o.currentSeq());
        this.#handshakeSent = true;
        return;
      }
      case 'sync-step2':
      case 'sync-update':
        Y.applyUpdate(this.#o.doc, message.update, REMOTE_ORIGIN);
        if (message.type === 'sync-step2' && !this.#serverSynced) {
          this.#serverSynced = true;
          this.#attempt = 0;
          this.#o.onStatus();
        }
        return;
      default:
        // Awareness and the rest: these documents show no presence.
        return;
    }
  }

  #sendCounted(frame: Uint8Array, coveredSeq: number): void {
    const previous = this.#coverage[this.#coverage.length - 1] ?? 0;
    this.#coverage.push(Math.max(previous, coveredSeq));
    this.#socket?.send(frame);
  }

  #dropSocket(): void {
    const socket = this.#socket;
    if (socket) {
      socket.onopen = null;
      socket.onmessage = null;
      socket.onclose = null;
    }
    this.#clearConnectTimer();
    this.#socket = null;
    this.#open = false;
    this.#handshakeSent = false;
    this.#serverSynced = false;
    this.#coverage = [];
  }

  #scheduleRetry(soon: boolean): void {
    this.#clearRetry();
    const random = this.#o.random ?? Math.random;
    const ceiling = soon ? this.#backoff.soonMs : Math.min(this.#backoff.capMs, this.#backoff.baseMs * 2 ** this.#attempt);
    if (!soon) this.#attempt = Math.min(this.#attempt + 1, 30);
    // Full jitter: a fleet that lost the server together comes back spread over the window.
    const delay = Math.floor(random() * ceiling);
    this.#timer = this.#setTimer(() => {
      this.#timer = null;
      if (this.#wanted && this.#socket === null && !this.#refused) this.#openSocket();
    }, delay);
  }

  #clearRetry(): void {
    if (this.#timer !== null) this.#clearTimer(this.#timer);
    this.#timer = null;
  }

  #clearConnectTimer(): void {
    if (this.#connectTimer !== null) this.#clearTimer(this.#connectTimer);
    this.#connectTimer = null;
  }

  #setTimer(fn: () => void, ms: number): unknown {
    return (this.#o.setTimer ?? setTimeout)(fn, ms);
  }

  #clearTimer(handle: unknown): void {
    if (this.#o.clearTimer) this.#o.clearTimer(handle);
    else clearTimeout(handle as ReturnType<typeof setTimeout>);
  }
}

/** Exposed for tests of the retry policy: the largest delay before retry number `attempt` (0-based). */
export function backoffCeiling(attempt: number, options: BackoffOptions = {}): number {
  const o = { ...DEFAULT_BACKOFF, ...options };
  return Math.min(o.capMs, o.baseMs * 2 ** attempt);
}
