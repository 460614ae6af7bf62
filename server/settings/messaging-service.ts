import type { AllowDmsFrom, MessagingSettings, UpdateMessagingSettingsBody } from '../../shared/schemas/messaging-settings.ts';
import type { UserFile } from '../storage/index.ts';
import type { UsersService } from '../users/service.ts';
import * as repo from './repo.ts';

/** Messaging preferences: one row in the user's file. */
export class MessagingSettingsService {
  constructor(private readonly users: Pick<UsersService, 'file' | 'changeCard'>) {}

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

  async update(userId: string, patch: UpdateMessagingSettingsBody): Promise<MessagingSettings> {
    const write = () => {
      const file = this.users.file(userId);
      file.transaction(() => repo.updateMessagingSettings(file, patch));
    };
    // Who may open a DM is on the user's card too (others' requests read it there): a change of it
    // goes through the card's order. The other settings are the user's own business.
    const allow = patch.allow_dms_from;
    if (allow !== undefined && allow !== allowDmsFromOf(this.users.file(userId))) await this.users.changeCard(userId, write);
    else write();
    return this.get(userId);
  }
}

/** Who may open a DM with the user whose file this is: for their card (users derives it from the file). */
export function allowDmsFromOf(file: UserFile): AllowDmsFrom {
  return repo.readMessagingSettings(file).allow_dms_from as AllowDmsFrom;
}
