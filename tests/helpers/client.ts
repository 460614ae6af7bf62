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

/** Waits until the note lists of all handles are identical. */
export async function converged(handles: Notes[], timeoutMs = 30_000): Promise<void> {
  const same = () => {
    const first = JSON.stringify(handles[0]!.list());
    return handles.every((h) => JSON.stringify(h.list()) === first);
  };
  await Promise.all(handles.map((h) => h.waitFor(same, 'devices to converge', timeoutMs)));
}
