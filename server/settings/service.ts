import { settingsMap } from '../../shared/settings-doc.ts';
import {
  SETTINGS_MAX_KEYS,
  SETTINGS_TOTAL_MAX_BYTES,
  jsonByteLength,
  type UpdateSettingsBody,
  type UserSettings,
} from '../../shared/schemas/settings.ts';
import { AppError } from '../http/app-error.ts';
import type { DocRegistry } from '../sync/registry.ts';
import type { AllowDmsFrom, MessagingSettings, UpdateMessagingSettingsBody } from '../../shared/schemas/messaging-settings.ts';
import type { UsersService } from '../users/service.ts';
import * as repo from './repo.ts';

export class MessagingSettingsService {
  constructor(private readonly users: UsersService) {}

  get(userId: string): MessagingSettings {
    const row = repo.readMessagingSettings(this.users.file(userId));
    return {
      user_id: userId,
      read_receipts_enabled: row.read_receipts_enabled === 1,
      typing_indicators_enabled: row.typing_indicators_enabled === 1,
      compact_messages_enabled: row.compact_messages_enabled === 1,
      allow_dms_from: row.allow_dms_from as AllowDmsFrom,
      auto_create_dms: row.auto_create_dms === 1,
      max_message_length: row.max_message_length,
      max_attachment_size: row.max_attachment_size,
      max_attachments_per_message: row.max_attachments_per_message,
    };
  }

  update(userId: string, patch: UpdateMessagingSettingsBody): MessagingSettings {
    const file = this.users.file(userId);
    file.transaction(() => repo.updateMessagingSettings(file, patch));
    return this.get(userId);
  }
}

/**
 * Cloud-synced preferences, backed by the `settings` Yjs document (root map `settings`), also
 * reachable at `/sync/settings`: last writer wins per key.
 */
export class UserSettingsService {
  constructor(private readonly registry: DocRegistry) {}

  get(userId: string): UserSettings {
    return this.registry.read(userId, 'settings', (doc) => settingsMap(doc).toJSON() as UserSettings);
  }

  async update(userId: string, patch: UpdateSettingsBody): Promise<UserSettings> {
    return this.registry.change(userId, 'settings', (doc) => {
      const map = settingsMap(doc);
      const next: UserSettings = { ...(map.toJSON() as UserSettings) };
      for (const [key, value] of Object.entries(patch)) {
        if (value === null) delete next[key];
        else next[key] = value;
      }
      // A patch may not take the document past the limits, but one that does not grow it (a
      // cleanup after a sync client wrote past them) is always allowed.
      const current = map.toJSON() as UserSettings;
      const grows = Object.keys(next).length > Object.keys(current).length || jsonByteLength(next) > jsonByteLength(current);
      if (grows && (Object.keys(next).length > SETTINGS_MAX_KEYS || jsonByteLength(next) > SETTINGS_TOTAL_MAX_BYTES)) {
        throw new AppError('invalid_input', `Settings may hold at most ${SETTINGS_MAX_KEYS} keys and ${SETTINGS_TOTAL_MAX_BYTES} bytes of JSON`);
      }
      for (const [key, value] of Object.entries(patch)) {
        if (value === null) map.delete(key);
        else map.set(key, value);
      }
      return next;
    });
  }
}
