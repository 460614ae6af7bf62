import * as Y from 'yjs';
import * as encoding from 'lib0/encoding';
import WebSocket from 'ws';
import { WebsocketProvider } from 'y-websocket';
import assert from 'node:assert/strict';
import type { Api, TestUser } from './server.ts';
import { readMessage, type NotesChannel } from '../../shared/index.ts';

export interface Device {
  doc: Y.Doc;
  provider: WebsocketProvider;
  destroy(): void;
}

/** A device as apps build it with the stock y-websocket client, unchanged. */
export function openDevice(baseUrl: string, docName: string, token: string, options: { connect?: boolean; doc?: Y.Doc } = {}): Device {
  const doc = options.doc ?? new Y.Doc();
  const provider = new WebsocketProvider(`${baseUrl.replace(/^http/, 'ws')}/sync`, docName, doc, {
    params: { token },
    WebSocketPolyfill: WebSocket as unknown as typeof globalThis.WebSocket,
    connect: options.connect ?? true,
    disableBc: true,
  });
  return {
    doc,
    provider,
    destroy() {
      provider.destroy();
      doc.destroy();
    },
  };
}

/** Resolves once the provider has completed a sync with the server. */
export function synced(device: Device, timeoutMs = 20_000): Promise<void> {
  if (device.provider.synced) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      device.provider.off('sync', onSync);
      reject(new Error('timed out waiting for the device to sync'));
    }, timeoutMs);
    const onSync = (state: boolean) => {
      if (!state) return;
      clearTimeout(timer);
      device.provider.off('sync', onSync);
      resolve();
    };
    device.provider.on('sync', onSync);
  });
}

/** Resolves when `predicate(doc)` holds, re-checked on every change of the doc (no polling). */
export function until(doc: Y.Doc, predicate: (doc: Y.Doc) => boolean, label = 'condition', timeoutMs = 20_000): Promise<void> {
  if (predicate(doc)) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      doc.off('update', check);
      reject(new Error(`timed out waiting for ${label}`));
    }, timeoutMs);
    const check = () => {
      if (!predicate(doc)) return;
      clearTimeout(timer);
      doc.off('update', check);
      resolve();
    };
    doc.on('update', check);
  });
}

/**
 * Waits until a fresh device, connected now, sees `predicate` hold. The server relays and serves
 * only what it has stored, so what a new device receives is what is stored.
 */
export async function whenStored(baseUrl: string, docName: string, token: string, predicate: (doc: Y.Doc) => boolean, label: string): Promise<void> {
  const witness = openDevice(baseUrl, docName, token);
  try {
    await until(witness.doc, predicate, label);
  } finally {
    witness.destroy();
  }
}

export async function notesChannelOf(api: Api, user: TestUser): Promise<string> {
  const res = await api.get<NotesChannel>('/users/@me/notes', { token: user.token });
  if (res.status !== 200) throw new Error(`notes channel: ${res.status} ${res.text}`);
  return res.body.id;
}

/** Opens a raw WebSocket (for malformed frames and upgrade checks); resolves once open or refused. */
export function rawSocket(
  url: string,
  options: WebSocket.ClientOptions = {},
  protocols?: string[],
): Promise<{ ws: WebSocket; status: number; first: Promise<Uint8Array | undefined>; closed: Promise<{ code: number; reason: string }> }> {
  return new Promise((resolve) => {
    const ws = new WebSocket(url.replace(/^http/, 'ws'), protocols, options);
    ws.binaryType = 'arraybuffer';
    // Listened for from the start: a frame that comes with the 101 is emitted before the code
    // awaiting this promise runs, and a listener added there would miss it.
    const first = new Promise<Uint8Array | undefined>((settle) => {
      ws.once('message', (data: ArrayBuffer) => settle(new Uint8Array(data)));
      ws.once('close', () => settle(undefined));
    });
    const closed = closeEvent(ws);
    ws.once('open', () => resolve({ ws, status: 101, first, closed }));
    ws.once('unexpected-response', (_req, res) => {
      resolve({ ws, status: res.statusCode ?? 0, first, closed });
      res.resume();
    });
    ws.once('error', () => resolve({ ws, status: 0, first, closed }));
  });
}

export function closeEvent(ws: WebSocket): Promise<{ code: number; reason: string }> {
  return new Promise((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })));
}

/** A raw protocol frame: message type, optional sync step, then the payload as varUint8Array. */
export function frameOf(type: number, step: number | null, payload: Uint8Array): Uint8Array {
  const encoder = encoding.createEncoder();
  encoding.writeVarUint(encoder, type);
  if (step !== null) encoding.writeVarUint(encoder, step);
  encoding.writeVarUint8Array(encoder, payload);
  return encoding.toUint8Array(encoder);
}

/** Retries `attempt` until it returns a value (not undefined), for at most `ms`: a bounded wait for a condition, no sleep. */
export async function within<T>(ms: number, label: string, attempt: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await attempt();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`not within ${ms} ms: ${label}`);
    await new Promise((resolve) => setImmediate(resolve));
  }
}

/** A raw device socket with acknowledgements: sends one note per update and counts what the server acknowledged. */
export async function ackingDevice(url: string, channel: string, user: TestUser) {
  const { ws, status } = await rawSocket(`${url}/sync/${channel}?token=${user.token}&ack=1`);
  assert.equal(status, 101);
  const doc = new Y.Doc();
  const device = { ws, acked: 0, sent: 0, closed: closeEvent(ws) };
  ws.on('message', (data: ArrayBuffer) => {
    const message = readMessage(new Uint8Array(data));
    if (message.type === 'ack') device.acked = message.count;
  });
  return {
    ws,
    closed: device.closed,
    get acked() {
      return device.acked;
    },
    get sent() {
      return device.sent;
    },
    send(content: string): void {
      const before = Y.encodeStateVector(doc);
      const id = String(1_100_000_000_000_000_000n + BigInt(device.sent));
      doc.transact(() => {
        const entry = new Y.Map<unknown>();
        doc.getMap('messages').set(id, entry);
        entry.set('id', id);
        entry.set('content', new Y.Text(content));
        entry.set('created_at', device.sent);
        entry.set('edited_at', null);
      });
      device.sent += 1;
      (ws as WebSocket).send(frameOf(0, 2, Y.encodeStateAsUpdate(doc, before)));
    },
  };
}
