import * as Y from 'yjs';
import * as encoding from 'lib0/encoding';
import WebSocket from 'ws';
import { WebsocketProvider } from 'y-websocket';
import type { Api, TestUser } from './server.ts';
import type { NotesChannel } from '../../shared/index.ts';

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
export function rawSocket(url: string, options: WebSocket.ClientOptions = {}, protocols?: string[]): Promise<{ ws: WebSocket; status: number }> {
  return new Promise((resolve) => {
    const ws = new WebSocket(url.replace(/^http/, 'ws'), protocols, options);
    ws.binaryType = 'arraybuffer';
    ws.once('open', () => resolve({ ws, status: 101 }));
    ws.once('unexpected-response', (_req, res) => {
      resolve({ ws, status: res.statusCode ?? 0 });
      res.resume();
    });
    ws.once('error', () => resolve({ ws, status: 0 }));
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
