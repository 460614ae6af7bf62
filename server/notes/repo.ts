import type { UserFile } from '../storage/index.ts';

export interface NotesChannelRow {
  id: string;
  created_at: number;
}

export function readNotesChannel(file: UserFile): NotesChannelRow | undefined {
  return file.stmt('SELECT id, created_at FROM notes_channel').get() as NotesChannelRow | undefined;
}

/** Creates the channel unless one exists; either way returns the one that exists. */
export function getOrCreateNotesChannel(file: UserFile, id: string, now: number): NotesChannelRow {
  file.stmt('INSERT OR IGNORE INTO notes_channel (singleton, id, created_at) VALUES (1, ?, ?)').run(id, now);
  return readNotesChannel(file) as NotesChannelRow;
}
