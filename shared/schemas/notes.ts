import { z } from 'zod';
import { snowflakeParam, snowflakeSchema } from './common.ts';

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
  before: snowflakeSchema.optional(),
});
export type ListMessagesQuery = z.infer<typeof listMessagesQuerySchema>;

/**
 * `/channels/{channel_id}/messages`: a channel id that is not a snowflake names no channel, so it is
 * the same 404 as someone else's channel (which only the service can tell).
 */
export const channelParamsSchema = z.object({ channel_id: snowflakeParam('not_found', 'No such channel') });

/**
 * `/channels/{channel_id}/messages/{message_id}`. The message id is any segment here: the service
 * answers a malformed one with 404 `No such message` only after it has found the channel to be the
 * caller's, and a channel that is not theirs must stay `No such channel` whatever the message id.
 */
export const messageParamsSchema = channelParamsSchema.extend({ message_id: z.string() });
