import type * as Y from 'yjs';
import { readSettings, settingKeyProblem, settingValueProblem, settingsMap } from '../../shared/settings-doc.ts';
import { SETTINGS_MAX_KEYS, SETTINGS_TOTAL_MAX_BYTES, SETTINGS_VALUE_MAX_BYTES, jsonByteLength } from '../../shared/schemas/settings.ts';
import type { DocPolicy } from '../sync/document.ts';

/**
 * The settings limits REST enforces, enforced on `/sync/settings` too. An update is refused whole
 * (4400, nothing stored) when it sets a key outside the naming rules or to a value that is not plain
 * JSON or is over 16 KiB, when it sets anything while leaving the settings over 200 keys or 256 KiB,
 * or when it touches anything but the root `settings` map. Removing keys is always allowed, so a
 * device can clean up.
 */
export const settingsDocPolicy: DocPolicy = {
  prepare(doc: Y.Doc): void {
    settingsMap(doc);
  },

  checkIncoming(doc: Y.Doc, transaction: Y.Transaction): string | null {
    const map = settingsMap(doc);
    let setSome = false;
    // Yjs types `changed` by its base type, which a Y.Map is not assignable to: compare by identity.
    const root: unknown = map;
    for (const [type, keys] of transaction.changed) {
      if (type !== root) return 'only the keys of the root "settings" map may change';
      for (const key of keys) {
        if (key === null) return 'the "settings" map holds keys, not a list';
        if (!map.has(key)) continue;
        setSome = true;
        const problem = settingKeyProblem(key) ?? settingValueProblem(map.get(key));
        if (problem !== null) return `setting ${JSON.stringify(key.slice(0, 64))}: ${problem}`;
        if (jsonByteLength(map.get(key)) > SETTINGS_VALUE_MAX_BYTES) {
          return `setting ${JSON.stringify(key)}: over ${SETTINGS_VALUE_MAX_BYTES} bytes of JSON`;
        }
      }
    }
    if (!setSome) return null;
    const settings = readSettings(doc);
    if (Object.keys(settings).length > SETTINGS_MAX_KEYS || jsonByteLength(settings) > SETTINGS_TOTAL_MAX_BYTES) {
      return `settings may hold at most ${SETTINGS_MAX_KEYS} keys and ${SETTINGS_TOTAL_MAX_BYTES} bytes of JSON`;
    }
    return null;
  },
};
