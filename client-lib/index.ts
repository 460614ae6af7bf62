/**
 * Plexichat client library: a typed REST client and offline-first notes and settings sync, for Node/Electron
 * and browsers / React Native. The SQLite store loads its native module only when opened.
 */
export { PlexichatClient } from './client.ts';
export type * from './client.ts';
export { ApiError, type ApiErrorCode } from './errors.ts';
export { Notes, openNotes, type NotesEvents, type NotesHost, type OpenNotesOptions, type NoteMessage } from './notes.ts';
export { Settings, openSettings, type SettingsEvents, type SettingsChange, type OpenSettingsOptions } from './settings.ts';
export { SyncedDoc, type SyncHost, type SyncedDocEvents, type OpenSyncedDocOptions } from './synced-doc.ts';
export { MemoryStore, compact, DEFAULT_COMPACTION, type LocalStore, type LocalState, type StoredUpdate, type CompactionOptions } from './store.ts';
export { openFileStore, FileStore, type FileStoreOptions } from './file-store.ts';
export { openIndexedDbStore, IndexedDbStore, type IdbFactoryLike, type IndexedDbStoreOptions } from './indexeddb-store.ts';
export {
  SyncProvider,
  backoffCeiling,
  DEFAULT_BACKOFF,
  REMOTE_ORIGIN,
  type BackoffOptions,
  type SyncStatus,
  type WebSocketLike,
  type WebSocketConstructor,
} from './sync.ts';
