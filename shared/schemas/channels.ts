import { z } from 'zod';
import { isSnowflake } from '../snowflake.ts';
import type { PublicUser } from './users.ts';

/** Issue messages the route maps to the two documented errors ("required" vs "invalid format"). */
export const RECIPIENT_ID_REQUIRED_MESSAGE = 'recipient_id is required';
export const RECIPIENT_ID_INVALID_MESSAGE = 'recipient_id must be a snowflake id (decimal digits)';

/** `POST /users/@me/channels`. Absent, null and "" all count as missing. */
export const openDmBodySchema = z.strictObject({
  recipient_id: z
    .string({
      error: (issue) => (issue.input === undefined || issue.input === null ? RECIPIENT_ID_REQUIRED_MESSAGE : RECIPIENT_ID_INVALID_MESSAGE),
    })
    .min(1, { error: RECIPIENT_ID_REQUIRED_MESSAGE, abort: true })
    .refine(isSnowflake, { error: RECIPIENT_ID_INVALID_MESSAGE }),
});
export type OpenDmBody = z.infer<typeof openDmBodySchema>;

/** The documented answer of `POST /users/@me/channels`. */
export interface DmChannel {
  id: string;
  type: 'dm';
  recipient_id: string;
  recipient: PublicUser;
}

/** An entry of `GET /users/@me/channels`: `last_message_id` is null until the DM has messages. */
export interface DmChannelListEntry extends DmChannel {
  last_message_id: string | null;
}
