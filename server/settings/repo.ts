import type { UpdateMessagingSettingsBody } from '../../shared/schemas/messaging-settings.ts';
import type { UserFile } from '../storage/index.ts';

export interface MessagingSettingsRow {
  read_receipts_enabled: number;
  typing_indicators_enabled: number;
  compact_messages_enabled: number;
  allow_dms_from: string;
  auto_create_dms: number;
  max_message_length: number | null;
  max_attachment_size: number | null;
  max_attachments_per_message: number | null;
}

export function readMessagingSettings(file: UserFile): MessagingSettingsRow {
  const row = file
    .stmt(
      `SELECT read_receipts_enabled, typing_indicators_enabled, compact_messages_enabled, allow_dms_from,
              auto_create_dms, max_message_length, max_attachment_size, max_attachments_per_message
       FROM messaging_settings`,
    )
    .get() as MessagingSettingsRow | undefined;
  if (!row) throw new Error(`user file ${file.userId} has no messaging_settings row`);
  return row;
}

/** Writes the given fields; COALESCE keeps the stored value where a field is absent. */
export function updateMessagingSettings(file: UserFile, patch: UpdateMessagingSettingsBody): void {
  const flag = (value: boolean | undefined) => (value === undefined ? null : value ? 1 : 0);
  file
    .stmt(
      `UPDATE messaging_settings SET
         read_receipts_enabled = COALESCE(?, read_receipts_enabled),
         typing_indicators_enabled = COALESCE(?, typing_indicators_enabled),
         compact_messages_enabled = COALESCE(?, compact_messages_enabled),
         allow_dms_from = COALESCE(?, allow_dms_from),
         auto_create_dms = COALESCE(?, auto_create_dms)`,
    )
    .run(
      flag(patch.read_receipts_enabled),
      flag(patch.typing_indicators_enabled),
      flag(patch.compact_messages_enabled),
      patch.allow_dms_from ?? null,
      flag(patch.auto_create_dms),
    );
}
