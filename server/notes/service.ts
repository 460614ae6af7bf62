import * as Y from 'yjs';
import type { Logger } from 'pino';
import { insertNote, listNotes, newestNote, notesMap, readNote, replaceNoteText, type OnInvalidNote } from '../../shared/notes-doc.ts';
import type { ListMessagesQuery, Message, NotesChannel } from '../../shared/schemas/notes.ts';
import { compareSnowflakes, isSnowflake } from '../../shared/snowflake.ts';
import { nowSeconds } from '../../shared/time.ts';
import { AppError } from '../core/app-error.ts';
import type { Storage } from '../storage/index.ts';
import type { DocRegistry } from '../sync/registry.ts';
import type { UsersService } from '../users/service.ts';
import * as repo from './repo.ts';

/**
 * The notes channel and its messages over REST. Messages live in the notes Yjs document, the same
 * one devices sync, so a REST write reaches connected devices at once and vice versa. Whatever a
 * device wrote into it is read with care: entries that are not messages are skipped (and logged),
 * and REST can still delete or rewrite any message id a device broke.
 */
export class NotesService {
  constructor(private readonly deps: { storage: Storage; users: UsersService; registry: DocRegistry; logger: Logger }) {}

  /** Get-or-create: one channel per user, ever (a singleton row makes concurrent calls agree). */
  channel(userId: string): NotesChannel {
    const file = this.deps.users.file(userId);
    const row = repo.readNotesChannel(file) ?? file.transaction(() => repo.getOrCreateNotesChannel(file, this.deps.storage.nextId(), nowSeconds()));
    const newest = this.deps.registry.read(userId, 'notes', (doc) => newestNote(doc, this.reporter(userId)));
    return {
      id: row.id,
      type: 'notes',
      name: 'Personal Notes',
      last_message_id: newest?.id ?? null,
      last_message_at: newest?.created_at ?? null,
    };
  }

  /** Which of the user's documents a `/sync/{doc}` name means: `settings`, or their notes channel id. */
  syncDocOf(userId: string, docParam: string): 'settings' | 'notes' | null {
    if (docParam === 'settings') return 'settings';
    return isSnowflake(docParam) && this.notesChannelId(userId) === docParam ? 'notes' : null;
  }

  list(userId: string, channelId: string, query: ListMessagesQuery): Message[] {
    this.assertOwnChannel(userId, channelId);
    return this.deps.registry.read(userId, 'notes', (doc) => {
      const all = listNotes(doc, this.reporter(userId));
      const before = query.before;
      const older = before === undefined ? all : all.filter((note) => compareSnowflakes(note.id, before) < 0);
      return older.slice(0, query.limit).map((note) => ({ ...note, channel_id: channelId }));
    });
  }

  create(userId: string, channelId: string, content: string): Message {
    this.assertOwnChannel(userId, channelId);
    const note = { id: this.deps.storage.nextId(), content, created_at: nowSeconds() };
    this.deps.registry.change(userId, 'notes', (doc) => insertNote(doc, note));
    return { ...note, edited_at: null, channel_id: channelId };
  }

  /** Edits a message's text; an entry a device broke (content not text, bad times) is repaired too. */
  update(userId: string, channelId: string, messageId: string, content: string): Message {
    this.assertOwnChannel(userId, channelId);
    const editedAt = nowSeconds();
    const updated = this.deps.registry.change(userId, 'notes', (doc) => {
      const entry = this.entry(doc, messageId);
      const before = readNote(entry, messageId);
      const text = entry.get('content');
      if (text instanceof Y.Text) replaceNoteText(text, content);
      else entry.set('content', new Y.Text(content));
      // Fields a device broke are written back with the values reads already show for them.
      if (entry.get('id') !== messageId) entry.set('id', messageId);
      if (before !== null && entry.get('created_at') !== before.created_at) entry.set('created_at', before.created_at);
      entry.set('edited_at', editedAt);
      return readNote(entry, messageId);
    });
    if (!updated) throw messageNotFound();
    return { ...updated, channel_id: channelId };
  }

  /** Deletes a message; any entry under a message id goes, whatever a device put there. */
  remove(userId: string, channelId: string, messageId: string): void {
    this.assertOwnChannel(userId, channelId);
    this.deps.registry.change(userId, 'notes', (doc) => {
      const map = notesMap(doc);
      if (!isSnowflake(messageId) || !map.has(messageId)) throw messageNotFound();
      map.delete(messageId);
    });
  }

  private entry(doc: Y.Doc, messageId: string): Y.Map<unknown> {
    const entry = isSnowflake(messageId) ? notesMap(doc).get(messageId) : undefined;
    if (!(entry instanceof Y.Map)) throw messageNotFound();
    return entry as Y.Map<unknown>;
  }

  private notesChannelId(userId: string): string | undefined {
    return repo.readNotesChannel(this.deps.users.file(userId))?.id;
  }

  /** 404 for any channel that is not the caller's notes channel, without saying whose it is. */
  private assertOwnChannel(userId: string, channelId: string): void {
    if (!isSnowflake(channelId) || this.notesChannelId(userId) !== channelId) {
      throw new AppError('not_found', 'No such channel');
    }
  }

  private reporter(userId: string): OnInvalidNote {
    return (id, problem) =>
      this.deps.logger.warn({ userId, id: id.slice(0, 64), problem }, 'read past a notes entry that is not a valid message (written by a sync client)');
  }
}

function messageNotFound(): AppError {
  return new AppError('not_found', 'No such message');
}
