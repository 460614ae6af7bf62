import { z } from 'zod';

export const ALLOW_DMS_FROM = ['everyone', 'friends', 'none'] as const;
export type AllowDmsFrom = (typeof ALLOW_DMS_FROM)[number];

export interface MessagingSettings {
  user_id: string;
  read_receipts_enabled: boolean;
  typing_indicators_enabled: boolean;
  compact_messages_enabled: boolean;
  allow_dms_from: AllowDmsFrom;
  auto_create_dms: boolean;
  max_message_length: number | null;
  max_attachment_size: number | null;
  max_attachments_per_message: number | null;
}

export const updateMessagingSettingsBodySchema = z.strictObject({
  read_receipts_enabled: z.boolean().optional(),
  typing_indicators_enabled: z.boolean().optional(),
  compact_messages_enabled: z.boolean().optional(),
  allow_dms_from: z.enum(ALLOW_DMS_FROM).optional(),
  auto_create_dms: z.boolean().optional(),
});
export type UpdateMessagingSettingsBody = z.infer<typeof updateMessagingSettingsBodySchema>;
