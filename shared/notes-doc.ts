import * as Y from 'yjs';
import { compareSnowflakes } from './snowflake.ts';

/**
 * The notes document: root Y.Map `messages`, keyed by message id (snowflake); each value a Y.Map
 * with `id`, `content` (Y.Text), `created_at` (int), `edited_at` (int | null). Shared by the server
 * (REST) and client-lib, so both read and write it the same way.
 */
export const NOTES_ROOT = 'messages';

export interface NoteMessage {
  id: string;
  content: string;
  created_at: number;
  edited_at: number | null;
}

export function notesMap(doc: Y.Doc): Y.Map<Y.Map<unknown>> {
  return doc.getMap<Y.Map<unknown>>(NOTES_ROOT);
}

/** Reads one message, or null if the entry is missing or not shaped like a message. */
export function readNote(entry: unknown, id: string): NoteMessage | null {
  if (!(entry instanceof Y.Map)) return null;
  const content = entry.get('content');
  const createdAt = entry.get('created_at');
  const editedAt = entry.get('edited_at');
  return {
    id,
    content: content instanceof Y.Text ? content.toString() : typeof content === 'string' ? content : '',
    created_at: typeof createdAt === 'number' ? createdAt : 0,
    edited_at: typeof editedAt === 'number' ? editedAt : null,
  };
}

/** All messages, newest first (by snowflake id). */
export function listNotes(doc: Y.Doc): NoteMessage[] {
  const out: NoteMessage[] = [];
  notesMap(doc).forEach((entry, id) => {
    const note = readNote(entry, id);
    if (note) out.push(note);
  });
  return out.sort((a, b) => compareSnowflakes(b.id, a.id));
}

/** The newest message id, or null: what `last_message_id` of the notes channel derives from. */
export function newestNote(doc: Y.Doc): NoteMessage | null {
  let newest: string | null = null;
  for (const id of notesMap(doc).keys()) if (newest === null || compareSnowflakes(id, newest) > 0) newest = id;
  return newest === null ? null : readNote(notesMap(doc).get(newest), newest);
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

const isHighSurrogate = (code: number) => code >= 0xd800 && code <= 0xdbff;
const isLowSurrogate = (code: number) => code >= 0xdc00 && code <= 0xdfff;
