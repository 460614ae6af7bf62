import * as Y from 'yjs';
import { insertNote, listNotes, newestNote, notesMap, readNote, replaceNoteText } from '../../shared/notes-doc.ts';
import type { ListMessagesQuery, Message, NotesChannel } from '../../shared/schemas/notes.ts';
import { compareSnowflakes, isSnowflake } from '../../shared/snowflake.ts';
import { AppError } from '../http/app-error.ts';
import type { Storage } from '../storage/index.ts';
import type { DocRegistry } from '../sync/registry.ts';
import type { UsersService } from '../users/service.ts';
import * as repo from './repo.ts';

const nowSeconds = () => Math.floor(Date.now() / 1000);

/**
 * The notes channel and its messages over REST. Messages live in the notes Yjs document, the same
 * one devices sync, so a REST write reaches connected devices at once and vice versa.
 */
export class NotesService {
  constructor(private readonly deps: { storage: Storage; users: UsersService; registry: DocRegistry }) {}

  /** Get-or-create: one channel per user, ever (a singleton row makes concurrent calls agree). */
  channel(userId: string): NotesChannel {
    const file = this.deps.users.file(userId);
    const row = repo.readNotesChannel(file) ?? file.transaction(() => repo.getOrCreateNotesChannel(file, this.deps.storage.nextId(), nowSeconds()));
    const newest = this.deps.registry.read(userId, 'notes', newestNote);
    return {
      id: row.id,
      type: 'notes',
      name: 'Personal Notes',
      last_message_id: newest?.id ?? null,
      last_message_at: newest?.created_at ?? null,
    };
  }

  /** The user's notes channel id, if `channelId` is it; otherwise 404 (never revealing whose it is). */
  channelIdOf(userId: string): string | undefined {
    return repo.readNotesChannel(this.deps.users.file(userId))?.id;
  }

  list(userId: string, channelId: string, query: ListMessagesQuery): Message[] {
    this.assertOwnChannel(userId, channelId);
    return this.deps.registry.read(userId, 'notes', (doc) => {
      const all = listNotes(doc);
      const before = query.before;
      const older = before === undefined ? all : all.filter((note) => compareSnowflakes(note.id, before) < 0);
      return older.slice(0, query.limit).map((note) => ({ ...note, channel_id: channelId }));
    });
  }

  async create(userId: string, channelId: string, content: string): Promise<Message> {
    this.assertOwnChannel(userId, channelId);
    const note = { id: this.deps.storage.nextId(), content, created_at: nowSeconds() };
    await this.deps.registry.change(userId, 'notes', (doc) => insertNote(doc, note));
    return { ...note, edited_at: null, channel_id: channelId };
  }

  async update(userId: string, channelId: string, messageId: string, content: string): Promise<Message> {
    this.assertOwnChannel(userId, channelId);
    const editedAt = nowSeconds();
    const updated = await this.deps.registry.change(userId, 'notes', (doc) => {
      const entry = this.entry(doc, messageId);
      const text = entry.get('content');
      if (text instanceof Y.Text) replaceNoteText(text, content);
      else entry.set('content', new Y.Text(content));
      entry.set('edited_at', editedAt);
      return readNote(entry, messageId);
    });
    if (!updated) throw messageNotFound();
    return { ...updated, channel_id: channelId };
  }

  async remove(userId: string, channelId: string, messageId: string): Promise<void> {
    this.assertOwnChannel(userId, channelId);
    await this.deps.registry.change(userId, 'notes', (doc) => {
      this.entry(doc, messageId);
      notesMap(doc).delete(messageId);
    });
  }

  private entry(doc: Y.Doc, messageId: string): Y.Map<unknown> {
    const entry = isSnowflake(messageId) ? notesMap(doc).get(messageId) : undefined;
    if (!(entry instanceof Y.Map)) throw messageNotFound();
    return entry;
  }

  private assertOwnChannel(userId: string, channelId: string): void {
    if (!isSnowflake(channelId) || this.channelIdOf(userId) !== channelId) {
      throw new AppError('not_found', 'No such channel');
    }
  }
}

function messageNotFound(): AppError {
  return new AppError('not_found', 'No such message');
}
