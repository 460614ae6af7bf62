import WebSocket from 'ws';
import * as Y from 'yjs';
import * as encoding from 'lib0/encoding';
import * as decoding from 'lib0/decoding';
import * as syncProtocol from 'y-protocols/sync';
import { MESSAGE_SYNC } from '../../shared/sync-protocol.ts';

/**
 * A lean sync client speaking the y-websocket protocol with y-protocols, the same code for every
 * server (it does what the stock y-websocket client does for documents, minus awareness, so the
 * client side costs the same whichever server it talks to). Hocuspocus frames the same messages
 * with the document name and wants an auth message first; that framing is the only difference.
 */
type Framing = 'y-websocket' | 'hocuspocus';

export interface SyncEndpoint {
  url: string;
  framing: Framing;
  /** The document name inside Hocuspocus frames (the URL names it for the others). */
  docName: string;
  token?: string;
  /** False for the relay, which holds no document and so never answers a sync step 1. */
  answersSync: boolean;
}

const HOCUSPOCUS_AUTH = 2;
const HOCUSPOCUS_SYNC_REPLY = 4;
const HOCUSPOCUS_AUTH_TOKEN = 0;
const HOCUSPOCUS_PERMISSION_DENIED = 1;

/** The document shape every client edits: our notes schema (messages → note → content). */
export const NOTE_ID = '1000000000000000000';

export class SyncClient {
  readonly doc = new Y.Doc();
  /** Called after every sync message from the server was applied. */
  onSync: (() => void) | null = null;
  private stepTwoWaiters: (() => void)[] = [];
  private closed = false;

  private constructor(
    private readonly endpoint: SyncEndpoint,
    private readonly ws: WebSocket,
  ) {
    ws.binaryType = 'nodebuffer';
    this.doc.on('update', (update: Uint8Array, origin: unknown) => {
      if (origin === this) return;
      const encoder = this.frame();
      syncProtocol.writeUpdate(encoder, update);
      this.send(encoder);
    });
    ws.on('message', (data: Buffer) => this.receive(data));
  }

  /** Opens the socket and, for servers that hold the document, waits for the initial sync. */
  static async connect(endpoint: SyncEndpoint, timeoutMs = 30_000): Promise<SyncClient> {
    const ws = new WebSocket(endpoint.url, { perMessageDeflate: false });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        ws.terminate();
        reject(new Error('connect timeout'));
      }, timeoutMs);
      ws.once('open', () => {
        clearTimeout(timer);
        resolve();
      });
      ws.once('unexpected-response', (_request, response) => {
        clearTimeout(timer);
        ws.terminate();
        reject(new Error(`upgrade refused: HTTP ${response.statusCode ?? '?'}`));
      });
      ws.once('error', (error) => {
        clearTimeout(timer);
        reject(error);
      });
    });
    ws.on('error', () => undefined);
    const client = new SyncClient(endpoint, ws);
    if (endpoint.framing === 'hocuspocus') {
      const auth = encoding.createEncoder();
      encoding.writeVarString(auth, endpoint.docName);
      encoding.writeVarUint(auth, HOCUSPOCUS_AUTH);
      encoding.writeVarUint(auth, HOCUSPOCUS_AUTH_TOKEN);
      encoding.writeVarString(auth, endpoint.token ?? 'benchmark');
      client.send(auth);
    }
    if (endpoint.answersSync) await client.roundTrip(timeoutMs);
    return client;
  }

  /** The note's text, once the note exists in this replica. */
  content(): Y.Text | undefined {
    const note = this.doc.getMap<Y.Map<unknown>>('messages').get(NOTE_ID);
    const content = note?.get('content');
    return content instanceof Y.Text ? content : undefined;
  }

  /** Creates the note (done by one client per document, before anyone edits it). */
  createNote(initial = ''): Y.Text {
    const content = new Y.Text(initial);
    this.doc.transact(() => {
      const note = new Y.Map<unknown>();
      note.set('id', NOTE_ID);
      note.set('content', content);
      note.set('created_at', 0);
      note.set('edited_at', null);
      this.doc.getMap<Y.Map<unknown>>('messages').set(NOTE_ID, note);
    });
    return content;
  }

  /**
   * Sends sync step 1 and waits for the server's step 2: since servers answer in order, every
   * update this client sent before has then been applied by the server.
   */
  roundTrip(timeoutMs = 30_000): Promise<void> {
    const encoder = this.frame();
    syncProtocol.writeSyncStep1(encoder, this.doc);
    const answered = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no sync step 2 from the server')), timeoutMs);
      this.stepTwoWaiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
    this.send(encoder);
    return answered;
  }

  /** Bytes queued in the socket, for the writer's back-pressure. */
  get bufferedAmount(): number {
    return this.ws.bufferedAmount;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.ws.terminate();
    this.doc.destroy();
  }

  private frame(): encoding.Encoder {
    const encoder = encoding.createEncoder();
    if (this.endpoint.framing === 'hocuspocus') encoding.writeVarString(encoder, this.endpoint.docName);
    encoding.writeVarUint(encoder, MESSAGE_SYNC);
    return encoder;
  }

  private send(encoder: encoding.Encoder): void {
    if (this.closed || this.ws.readyState !== WebSocket.OPEN) return;
    this.ws.send(encoding.toUint8Array(encoder));
  }

  private receive(data: Buffer): void {
    const decoder = decoding.createDecoder(data);
    if (this.endpoint.framing === 'hocuspocus') decoding.readVarString(decoder);
    const type = decoding.readVarUint(decoder);
    if (this.endpoint.framing === 'hocuspocus' && type === HOCUSPOCUS_AUTH) {
      if (decoding.readVarUint(decoder) === HOCUSPOCUS_PERMISSION_DENIED) this.close();
      return;
    }
    const isSync = type === MESSAGE_SYNC || (this.endpoint.framing === 'hocuspocus' && type === HOCUSPOCUS_SYNC_REPLY);
    // Awareness, query-awareness and Hocuspocus' sync-status messages carry nothing we measure.
    if (!isSync) return;
    const reply = this.frame();
    const headerLength = encoding.length(reply);
    const syncType = syncProtocol.readSyncMessage(decoder, reply, this.doc, this);
    if (encoding.length(reply) > headerLength) this.send(reply);
    if (syncType === syncProtocol.messageYjsSyncStep2) {
      const waiter = this.stepTwoWaiters.shift();
      waiter?.();
    }
    this.onSync?.();
  }
}
