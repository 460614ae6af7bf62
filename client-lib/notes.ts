import * as Y from 'yjs';
import { SnowflakeGenerator, MAX_WORKER_ID } from '../shared/snowflake.ts';
import { insertNote, listNotes, notesMap, readNote, replaceNoteText, type NoteMessage } from '../shared/notes-doc.ts';
import { messageContentSchema } from '../shared/schemas/notes.ts';
import { nowSeconds } from '../shared/time.ts';
import { SyncedDoc, loadDoc, resolveWebSocket, type OpenSyncedDocOptions, type SyncHost, type SyncedDocEvents, type SyncedDocInit } from './synced-doc.ts';

export type { NoteMessage };

/** What `openNotes` needs of the REST client (kept narrow so tests can fake it). */
export interface NotesHost extends SyncHost {
  notesChannel(): Promise<{ id: string }>;
}

export interface OpenNotesOptions extends OpenSyncedDocOptions {
  /** Random source for retry jitter and the device's id worker number (tests pass a seeded one). */
  random?: () => number;
}

export type NotesEvents = SyncedDocEvents<{ local: boolean }>;

const META_CHANNEL = 'channel_id';
const META_WORKER = 'snowflake_worker';
const META_LAST_MS = 'snowflake_last_ms';

/** Opens the notes document from the store, then (unless told not to) starts syncing. */
export async function openNotes(host: NotesHost, options: OpenNotesOptions): Promise<Notes> {
  const WebSocketImpl = resolveWebSocket(options);
  const state = await options.store.load();
  let channelId = state.meta[META_CHANNEL];
  if (channelId === undefined) {
    // The first open needs the server once, to learn the channel; every later one works offline.
    channelId = (await host.notesChannel()).id;
    await options.store.setMeta(META_CHANNEL, channelId);
  }
  const random = options.random ?? Math.random;
  let worker = Number(state.meta[META_WORKER]);
  if (!Number.isInteger(worker) || worker < 0 || worker > MAX_WORKER_ID) {
    // Devices pick their id worker number at random, so two devices rarely mint the same id even
    // offline in the same millisecond; each device's own ids never repeat.
    worker = Math.floor(random() * (MAX_WORKER_ID + 1));
    await options.store.setMeta(META_WORKER, String(worker));
  }

  const notes = new Notes({
    host,
    docName: channelId,
    channelId,
    store: options.store,
    loaded: loadDoc(state),
    ids: new SnowflakeGenerator({ workerId: worker, notBeforeMs: Number(state.meta[META_LAST_MS] ?? 0) + 1 }),
    WebSocket: WebSocketImpl,
    backoff: options.backoff,
    random,
  });
  if (options.connect ?? true) notes.connect();
  return notes;
}

interface NotesInit extends SyncedDocInit {
  channelId: string;
  ids: SnowflakeGenerator;
}

/**
 * The user's notes on this device. Every edit lands in the local store first and is sent when a
 * connection is up; `pending` counts this device's edits the server has not yet stored.
 */
export class Notes extends SyncedDoc<{ local: boolean }> {
  readonly channelId: string;
  readonly #ids: SnowflakeGenerator;
  protected readonly closedMessage = 'These notes are closed';

  constructor(init: NotesInit) {
    super(init);
    this.channelId = init.channelId;
    this.#ids = init.ids;
  }

  // --- reading ------------------------------------------------------------------------------

  /** All notes, newest first. */
  list(): NoteMessage[] {
    return listNotes(this.doc);
  }

  get(id: string): NoteMessage | null {
    return readNote(notesMap(this.doc).get(id), id);
  }

  // --- writing ------------------------------------------------------------------------------

  /** Adds a note with an id made on this device (works offline); returns the id. */
  add(text: string): string {
    this.assertOpen();
    const content = messageContentSchema.parse(text);
    const id = this.#ids.next();
    this.doc.transact(() => insertNote(this.doc, { id, content, created_at: nowSeconds() }));
    this.queueWrite((store) => store.setMeta(META_LAST_MS, String(this.#ids.lastTimestampMs)));
    return id;
  }

  /** Edits a note's text in place (cursor-friendly, merges with concurrent edits). */
  edit(id: string, fn: (text: Y.Text) => void): void {
    this.assertOpen();
    const entry = this.#entry(id);
    this.doc.transact(() => {
      let text = entry.get('content');
      if (!(text instanceof Y.Text)) {
        text = new Y.Text(typeof text === 'string' ? text : '');
        entry.set('content', text);
      }
      fn(text as Y.Text);
      entry.set('edited_at', nowSeconds());
    });
  }

  /** Replaces a note's text, touching only the part that changed. */
  setText(id: string, text: string): void {
    const content = messageContentSchema.parse(text);
    this.edit(id, (ytext) => replaceNoteText(ytext, content));
  }

  remove(id: string): boolean {
    this.assertOpen();
    if (!notesMap(this.doc).has(id)) return false;
    this.doc.transact(() => notesMap(this.doc).delete(id));
    return true;
  }

  // --- internals ----------------------------------------------------------------------------

  protected describeChange(local: boolean): { local: boolean } {
    return { local };
  }

  #entry(id: string): Y.Map<unknown> {
    const entry = notesMap(this.doc).get(id);
    if (!(entry instanceof Y.Map)) throw new RangeError(`No note with id ${id}`);
    return entry;
  }
}
