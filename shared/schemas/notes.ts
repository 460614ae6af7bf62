import { z } from 'zod';

export const NOTE_CONTENT_MAX_LENGTH = 4000;

export interface NotesChannel {
  id: string;
  type: 'notes';
  name: 'Personal Notes';
  last_message_id: string | null;
  last_message_at: number | null;
}

export interface Message {
  id: string;
  channel_id: string;
  content: string;
  created_at: number;
  edited_at: number | null;
}

/** 1-4000 characters; not only white space. */
export const messageContentSchema = z
  .string()
  .min(1, { message: 'Must not be empty' })
  .max(NOTE_CONTENT_MAX_LENGTH, { message: `Must be at most ${NOTE_CONTENT_MAX_LENGTH} characters` })
  .refine((s) => s.trim().length > 0, { message: 'Must not be only white space' });

export const createMessageBodySchema = z.strictObject({ content: messageContentSchema });
export type CreateMessageBody = z.infer<typeof createMessageBodySchema>;

export const updateMessageBodySchema = z.strictObject({ content: messageContentSchema });
export type UpdateMessageBody = z.infer<typeof updateMessageBodySchema>;

export const listMessagesQuerySchema = z.object({
  limit: z.coerce.number().int().min(1).max(100).default(50),
  before: z
    .string()
    .regex(/^[1-9][0-9]{0,18}$/, { message: 'Must be a message id' })
    .optional(),
});
export type ListMessagesQuery = z.infer<typeof listMessagesQuerySchema>;
