import type { AllowDmsFrom, MessagingSettings, UpdateMessagingSettingsBody } from '../../shared/schemas/messaging-settings.ts';
import type { UsersService } from '../users/service.ts';
import * as repo from './repo.ts';

/** Messaging preferences: one row in the user's file. */
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
