import type * as Y from 'yjs';

/**
 * The settings document: root Y.Map `settings`, flat string keys to plain JSON values (stored as
 * is, not as nested Y types), so concurrent writes resolve last writer wins per key.
 */
export const SETTINGS_ROOT = 'settings';

export function settingsMap(doc: Y.Doc): Y.Map<unknown> {
  return doc.getMap<unknown>(SETTINGS_ROOT);
}
