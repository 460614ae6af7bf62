import * as Y from 'yjs';
import { SETTINGS_KEY_PATTERN, SETTINGS_MAX_DEPTH, type JsonValue, type UserSettings } from './schemas/settings.ts';

/**
 * The settings document: root Y.Map `settings`, flat string keys to plain JSON values (stored as
 * is, not as nested Y types), so concurrent writes resolve last writer wins per key.
 */
const SETTINGS_ROOT = 'settings';

export function settingsMap(doc: Y.Doc): Y.Map<unknown> {
  return doc.getMap<unknown>(SETTINGS_ROOT);
}

/**
 * Why a stored value is not a setting, or null when it is plain JSON: only strings, finite
 * numbers, booleans, null, arrays and plain objects of those, nested at most SETTINGS_MAX_DEPTH deep.
 * Anything else a Yjs client can write (bigint, binary, undefined, nested Y types, objects with
 * another prototype) is refused on sync and skipped on read.
 */
export function settingValueProblem(value: unknown, depth = 0): string | null {
  switch (typeof value) {
    case 'string':
    case 'boolean':
      return null;
    case 'number':
      return Number.isFinite(value) ? null : 'not a finite number';
    case 'object': {
      if (value === null) return null;
      // `depth` arrays and objects enclose this one already.
      if (depth >= SETTINGS_MAX_DEPTH) return `arrays and objects nested more than ${SETTINGS_MAX_DEPTH} deep`;
      if (Array.isArray(value)) {
        for (const item of value) {
          const problem = settingValueProblem(item, depth + 1);
          if (problem !== null) return problem;
        }
        return null;
      }
      const proto: unknown = Object.getPrototypeOf(value);
      if (proto !== Object.prototype && proto !== null) return value instanceof Y.AbstractType ? 'a Yjs type, not a JSON value' : 'not a plain JSON value';
      for (const item of Object.values(value)) {
        const problem = settingValueProblem(item, depth + 1);
        if (problem !== null) return problem;
      }
      return null;
    }
    default:
      return `a ${typeof value}, not a JSON value`;
  }
}

/** Why a key is not a setting name, or null. */
export function settingKeyProblem(key: string): string | null {
  return SETTINGS_KEY_PATTERN.test(key) ? null : 'not a valid setting name';
}

/**
 * Every valid setting. Entries a client wrote that are not (a bad name, a value that is not plain
 * JSON) are skipped and reported to `onInvalid`, never thrown: a read must not break on what a
 * device stored.
 */
export function readSettings(doc: Y.Doc, onInvalid?: (key: string, problem: string) => void): UserSettings {
  const out: UserSettings = {};
  for (const [key, value] of settingsMap(doc)) {
    const problem = settingKeyProblem(key) ?? settingValueProblem(value);
    if (problem === null) {
      // defineProperty: a key like `__proto__` stays a plain key of the answer.
      Object.defineProperty(out, key, { value: value as JsonValue, enumerable: true, writable: true, configurable: true });
    } else {
      onInvalid?.(key, problem);
    }
  }
  return out;
}
