import type * as Y from 'yjs';
import { readSettings, settingKeyProblem, settingValueProblem, settingsMap } from '../shared/settings-doc.ts';
import {
  SETTINGS_MAX_KEYS,
  SETTINGS_TOTAL_MAX_BYTES,
  jsonByteLength,
  updateSettingsBodySchema,
  type JsonValue,
  type UserSettings,
} from '../shared/schemas/settings.ts';
import { SyncedDoc, loadDoc, resolveWebSocket, type OpenSyncedDocOptions, type SyncHost, type SyncedDocEvents, type SyncedDocInit } from './synced-doc.ts';

export type OpenSettingsOptions = OpenSyncedDocOptions;

/** `keys`: the keys this change set or removed. */
export interface SettingsChange {
  local: boolean;
  keys: string[];
}

export type SettingsEvents = SyncedDocEvents<SettingsChange>;

/** The `{doc}` of `/sync/{doc}` for the settings document. */
const SETTINGS_DOC = 'settings';

/** Opens the settings document from the store (no server needed), then (unless told not to) starts syncing. */
export async function openSettings(host: SyncHost, options: OpenSettingsOptions): Promise<Settings> {
  const WebSocketImpl = resolveWebSocket(options);
  const state = await options.store.load();
  const settings = new Settings({
    host,
    docName: SETTINGS_DOC,
    store: options.store,
    loaded: loadDoc(state),
    WebSocket: WebSocketImpl,
    backoff: options.backoff,
    random: options.random ?? Math.random,
  });
  if (options.connect ?? true) settings.connect();
  return settings;
}

/**
 * The user's cloud-synced preferences on this device: flat keys to JSON values, last writer wins
 * per key. Offline-first like `Notes`: every change lands in the local store first.
 */
export class Settings extends SyncedDoc<SettingsChange> {
  protected readonly closedMessage = 'These settings are closed';

  constructor(init: SyncedDocInit) {
    super(init);
    // Define the root map now: a Yjs transaction only reports keys of types that already exist,
    // so without this the first remote change would come with an empty `keys`.
    settingsMap(this.doc);
  }

  /**
   * A copy of the value, or undefined if the key is not set. An entry that is not a setting (a bad
   * name, a value that is not plain JSON, written by another client) reads as unset, as on the server.
   */
  get(key: string): JsonValue | undefined {
    const map = settingsMap(this.doc);
    if (!map.has(key)) return undefined;
    const value = map.get(key);
    if (settingKeyProblem(key) !== null || settingValueProblem(value) !== null) return undefined;
    return structuredClone(value as JsonValue);
  }

  /** Every setting (a copy), skipping entries that are not settings, as `GET /users/@me/settings` does. */
  all(): UserSettings {
    // fromEntries defines own keys, so a key like `__proto__` stays a plain key.
    return Object.fromEntries(Object.entries(readSettings(this.doc)).map(([key, value]) => [key, structuredClone(value)]));
  }

  /** Sets one key (works offline). `null` removes the key, as in `PATCH /users/@me/settings`. */
  set(key: string, value: JsonValue): void {
    this.update(new Map([[key, value]]));
  }

  /** Removes a key; false if it was not set. */
  remove(key: string): boolean {
    this.assertOpen();
    if (!settingsMap(this.doc).has(key)) return false;
    this.update(new Map([[key, null]]));
    return true;
  }

  /**
   * Sets several keys in one update (`null` removes), with the server's limits: keys of 1-64
   * `A-Z a-z 0-9 _ . : -`, values of at most 16 KiB of JSON, at most 200 keys and 256 KiB in all.
   * Throws RangeError (and changes nothing) if the result would break one.
   */
  update(patch: Map<string, JsonValue> | Record<string, JsonValue>): void {
    this.assertOpen();
    const entries = patch instanceof Map ? [...patch] : Object.entries(patch);
    for (const [key, value] of entries) {
      // The same schema the REST route validates with, one key at a time so the message names it.
      const parsed = updateSettingsBodySchema.safeParse(Object.fromEntries([[key, value]]));
      if (!parsed.success) throw new RangeError(`Invalid setting ${JSON.stringify(key)}: ${innermostMessage(parsed.error.issues)}`);
    }
    const map = settingsMap(this.doc);
    // Only real changes make an update: setting a key to what it already holds sends nothing. A
    // value that is not a setting is never what a valid one holds (and JSON cannot always show it).
    const holds = (key: string, value: JsonValue) =>
      map.has(key) && settingValueProblem(map.get(key)) === null && JSON.stringify(map.get(key)) === JSON.stringify(value);
    const changes = entries.filter(([key, value]) => (value === null ? map.has(key) : !holds(key, value)));
    if (changes.length === 0) return;
    // The server's rule: an update that sets a key must leave the settings within the limits,
    // counted over the entries that are settings; one that only removes keys is always taken.
    if (changes.some(([, value]) => value !== null)) {
      const next = new Map(Object.entries(readSettings(this.doc)));
      for (const [key, value] of changes) {
        if (value === null) next.delete(key);
        else next.set(key, value);
      }
      // fromEntries defines own keys, so a key like `__proto__` is measured like any other.
      if (next.size > SETTINGS_MAX_KEYS || jsonByteLength(Object.fromEntries(next)) > SETTINGS_TOTAL_MAX_BYTES) {
        throw new RangeError(`Settings may hold at most ${SETTINGS_MAX_KEYS} keys and ${SETTINGS_TOTAL_MAX_BYTES} bytes of JSON`);
      }
    }
    this.doc.transact(() => {
      for (const [key, value] of changes) {
        // A copy through JSON: Yjs keeps the object it is given, so later mutation by the app
        // must not reach the document.
        if (value === null) map.delete(key);
        else map.set(key, JSON.parse(JSON.stringify(value)) as JsonValue);
      }
    });
  }

  protected describeChange(local: boolean, transaction: Y.Transaction): SettingsChange {
    const map: unknown = settingsMap(this.doc);
    const keys: string[] = [];
    // Yjs types `changed` by its base type, which a Y.Map is not assignable to: find it by identity.
    for (const [type, changed] of transaction.changed) {
      if (type === map) for (const key of changed) if (key !== null) keys.push(key);
    }
    return { local, keys };
  }
}

interface IssueLike {
  message: string;
  issues?: readonly IssueLike[];
}

/** zod reports a bad record key as "Invalid key in record" with the useful message nested inside. */
function innermostMessage(issues: readonly IssueLike[]): string {
  const first = issues[0];
  if (first === undefined) return 'invalid';
  return first.issues && first.issues.length > 0 ? innermostMessage(first.issues) : first.message;
}
