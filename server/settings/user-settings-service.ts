import type { Logger } from 'pino';
import { readSettings, settingKeyProblem, settingValueProblem, settingsMap } from '../../shared/settings-doc.ts';
import { SETTINGS_MAX_KEYS, SETTINGS_TOTAL_MAX_BYTES, jsonByteLength, type UpdateSettingsBody, type UserSettings } from '../../shared/schemas/settings.ts';
import { AppError } from '../core/app-error.ts';
import type { DocRegistry } from '../sync/registry.ts';

/**
 * Cloud-synced preferences, backed by the `settings` Yjs document (root map `settings`), also
 * reachable at `/sync/settings`: last writer wins per key. What a device wrote is untrusted: reads
 * skip entries that are not settings, and every PATCH also removes them, so REST can always repair
 * a document a client broke.
 */
export class UserSettingsService {
  constructor(
    private readonly registry: DocRegistry,
    private readonly logger: Logger,
  ) {}

  get(userId: string): UserSettings {
    return this.registry.read(userId, 'settings', (doc) => readSettings(doc, this.reporter(userId)));
  }

  update(userId: string, patch: UpdateSettingsBody): UserSettings {
    return this.registry.change(userId, 'settings', (doc) => {
      const map = settingsMap(doc);
      const current = readSettings(doc);
      // No prototype: a key named `__proto__` is a key like any other.
      const next: UserSettings = Object.assign(Object.create(null) as UserSettings, current);
      for (const [key, value] of Object.entries(patch)) {
        if (value === null) delete next[key];
        else next[key] = value;
      }
      // A patch may not take the settings past the limits, but one that does not grow them (a
      // cleanup after a sync client wrote past them) is always allowed.
      const grows = Object.keys(next).length > Object.keys(current).length || jsonByteLength(next) > jsonByteLength(current);
      if (grows && (Object.keys(next).length > SETTINGS_MAX_KEYS || jsonByteLength(next) > SETTINGS_TOTAL_MAX_BYTES)) {
        throw new AppError('invalid_input', `Settings may hold at most ${SETTINGS_MAX_KEYS} keys and ${SETTINGS_TOTAL_MAX_BYTES} bytes of JSON`);
      }
      const report = this.reporter(userId);
      for (const [key, value] of map) {
        const problem = settingKeyProblem(key) ?? settingValueProblem(value);
        if (problem === null) continue;
        report(key, problem);
        map.delete(key);
      }
      for (const [key, value] of Object.entries(patch)) {
        if (value === null) map.delete(key);
        else map.set(key, value);
      }
      return next;
    });
  }

  private reporter(userId: string): (key: string, problem: string) => void {
    return (key, problem) => this.logger.warn({ userId, key: key.slice(0, 64), problem }, 'skipped a setting that is not valid (written by a sync client)');
  }
}
