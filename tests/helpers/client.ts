import WebSocket from 'ws';
import { PlexichatClient, type Notes, type WebSocketConstructor } from '../../client-lib/index.ts';
import type { Api } from './server.ts';
import { registerUser, type TestUser } from './server.ts';

/** Fast retries for tests: a device waits at most this long before trying the server again. */
export const TEST_BACKOFF = { baseMs: 20, capMs: 250, soonMs: 50, connectTimeoutMs: 5_000 };

/** A client signed in as a fresh user. */
export async function clientFor(api: Api, baseUrl: string): Promise<{ client: PlexichatClient; user: TestUser }> {
  const user = await registerUser(api);
  return { client: new PlexichatClient({ baseUrl, token: user.token }), user };
}

/** Bytes that went over the wire, per direction, for every socket made by its `WebSocket`. */
export class WireCounter {
  sent = 0;
  received = 0;
  readonly WebSocket: WebSocketConstructor;

  constructor() {
    const counter = this;
    this.WebSocket = class CountingWebSocket extends WebSocket {
      constructor(url: string, protocols?: string | string[]) {
        super(url, protocols);
        this.on('message', (data: Buffer | ArrayBuffer | Buffer[]) => {
          counter.received += Array.isArray(data) ? data.reduce((s, b) => s + b.byteLength, 0) : data.byteLength;
        });
      }
      override send(data: Parameters<WebSocket['send']>[0], ...rest: unknown[]): void {
        if (data instanceof Uint8Array || data instanceof ArrayBuffer) counter.sent += data.byteLength;
        (super.send as (...args: unknown[]) => void)(data, ...rest);
      }
    };
  }

  reset(): void {
    this.sent = 0;
    this.received = 0;
  }
}

/** Anything with the change/status events of a synced doc handle (Notes, Settings). */
interface Observable {
  on(event: 'change' | 'status', listener: () => void): () => void;
}

/**
 * Waits until `snapshot` is the same on every handle, re-checked on any handle's change or
 * status: a handle whose own last event came before another's final change must not be missed.
 */
export function convergedBy<H extends Observable>(handles: H[], snapshot: (handle: H) => string, timeoutMs = 30_000): Promise<void> {
  const same = () => handles.every((h) => snapshot(h) === snapshot(handles[0]!));
  if (same()) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const offs: (() => void)[] = [];
    const finish = (error?: Error) => {
      clearTimeout(timer);
      for (const off of offs) off();
      if (error) reject(error);
      else resolve();
    };
    const check = () => {
      if (same()) finish();
    };
    const timer = setTimeout(() => finish(new Error('timed out waiting for devices to converge')), timeoutMs);
    for (const h of handles) offs.push(h.on('change', check), h.on('status', check));
  });
}

/** Waits until the note lists of all handles are identical. */
export function converged(handles: Notes[], timeoutMs = 30_000): Promise<void> {
  return convergedBy(handles, (h) => JSON.stringify(h.list()), timeoutMs);
}
