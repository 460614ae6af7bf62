import * as Y from 'yjs';
import { compareSnowflakes, isSnowflake, snowflakeTimeMs } from './snowflake.ts';

/**
 * The notes document: root Y.Map `messages`, keyed by message id (snowflake); each value a Y.Map
 * with `id`, `content` (Y.Text), `created_at` (int), `edited_at` (int | null). Shared by the server
 * (REST) and client-lib, so both read and write it the same way.
 *
 * Devices write this document directly, so every read checks the shape it reads: an entry whose
 * key is not a snowflake or whose value is not a map is skipped; a field of the wrong type is
 * normalised (content to text, times to whole seconds). Either is reported to `onInvalid`, never
 * thrown.
 */
export const NOTES_ROOT = 'messages';

export interface NoteMessage {
  id: string;
  content: string;
  created_at: number;
  edited_at: number | null;
}

/** Told about each entry a read skipped or normalised, and why. */
export type OnInvalidNote = (id: string, problem: string) => void;

export function notesMap(doc: Y.Doc): Y.Map<unknown> {
  return doc.getMap<unknown>(NOTES_ROOT);
}

/** Reads one message, or null if the entry is missing or not a message. */
export function readNote(entry: unknown, id: string, onInvalid?: OnInvalidNote): NoteMessage | null {
  if (entry === undefined) return null;
  if (!isSnowflake(id)) {
    onInvalid?.(id, 'the key is not a message id');
    return null;
  }
  if (!(entry instanceof Y.Map)) {
    onInvalid?.(id, 'the entry is not a map');
    return null;
  }
  const content: unknown = entry.get('content');
  const createdAt: unknown = entry.get('created_at');
  const editedAt: unknown = entry.get('edited_at');
  let text = '';
  if (content instanceof Y.Text) text = content.toString();
  else if (typeof content === 'string') text = content;
  else onInvalid?.(id, 'content is not text');
  let created = Math.floor(snowflakeTimeMs(id) / 1000);
  if (isUnixSeconds(createdAt)) created = createdAt;
  else onInvalid?.(id, 'created_at is not a time');
  let edited: number | null = null;
  if (isUnixSeconds(editedAt)) edited = editedAt;
  else if (editedAt !== null && editedAt !== undefined) onInvalid?.(id, 'edited_at is not a time');
  return { id, content: text, created_at: created, edited_at: edited };
}

/** All messages, newest first (by snowflake id). */
export function listNotes(doc: Y.Doc, onInvalid?: OnInvalidNote): NoteMessage[] {
  const out: NoteMessage[] = [];
  for (const [id, entry] of notesMap(doc)) {
    const note = readNote(entry, id, onInvalid);
    if (note) out.push(note);
  }
  return out.sort((a, b) => compareSnowflakes(b.id, a.id));
}

/** The newest message, or null: what `last_message_id` of the notes channel derives from. */
export function newestNote(doc: Y.Doc, onInvalid?: OnInvalidNote): NoteMessage | null {
  let newest: NoteMessage | null = null;
  for (const [id, entry] of notesMap(doc)) {
    if (newest !== null && isSnowflake(id) && compareSnowflakes(id, newest.id) <= 0) continue;
    const note = readNote(entry, id, onInvalid);
    if (note) newest = note;
  }
  return newest;
}

/** Adds a message; call inside `doc.transact` to make one update. */
export function insertNote(doc: Y.Doc, note: { id: string; content: string; created_at: number }): void {
  const entry = new Y.Map<unknown>();
  entry.set('id', note.id);
  entry.set('content', new Y.Text(note.content));
  entry.set('created_at', note.created_at);
  entry.set('edited_at', null);
  notesMap(doc).set(note.id, entry);
}

/**
 * Replaces a message's text by editing only the part that changed (common prefix and suffix are
 * kept), so a concurrent edit elsewhere in the same note still merges instead of being overwritten.
 */
export function replaceNoteText(text: Y.Text, next: string): void {
  const current = text.toString();
  if (text.length !== current.length) {
    // Embeds or formatting (another client's doing) take positions the string does not show:
    // offsets into the string would land in the wrong places, so the whole text is replaced.
    text.delete(0, text.length);
    text.insert(0, next);
    return;
  }
  if (current === next) return;
  let start = 0;
  const max = Math.min(current.length, next.length);
  while (start < max && current.charCodeAt(start) === next.charCodeAt(start)) start += 1;
  let end = 0;
  while (end < max - start && current.charCodeAt(current.length - 1 - end) === next.charCodeAt(next.length - 1 - end)) end += 1;
  // Never split a surrogate pair.
  if (start > 0 && isHighSurrogate(current.charCodeAt(start - 1))) start -= 1;
  if (end > 0 && isLowSurrogate(current.charCodeAt(current.length - end))) end -= 1;
  const deleteCount = current.length - start - end;
  if (deleteCount > 0) text.delete(start, deleteCount);
  const insert = next.slice(start, next.length - end);
  if (insert.length > 0) text.insert(start, insert);
}

/** A whole number of seconds a JSON client can read exactly. */
function isUnixSeconds(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

const isHighSurrogate = (code: number) => code >= 0xd800 && code <= 0xdbff;
const isLowSurrogate = (code: number) => code >= 0xdc00 && code <= 0xdfff;
