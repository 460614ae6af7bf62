import { z } from 'zod';
import { emailSchema, passwordSchema, snowflakeParam, usernameSchema } from './common.ts';

/** Full private user object: only ever returned for the caller (`/users/@me`). */
export interface PrivateUser {
  id: string;
  username: string;
  email: string;
  avatar_url: string | null;
  created_at: number;
  email_verified: boolean;
  totp_enabled: boolean;
  age_verified: boolean;
  badges: string[];
}

/** Public user object: what anyone signed in may see of another user. */
export interface PublicUser {
  id: string;
  username: string;
  avatar_url: string | null;
  created_at: number;
  badges: string[];
}

export const updateMeBodySchema = z.strictObject({
  username: usernameSchema.optional(),
  email: emailSchema.optional(),
  password: passwordSchema.optional(),
  current_password: z.string().max(1024).optional(),
});
export type UpdateMeBody = z.infer<typeof updateMeBodySchema>;

/** `?username=`: missing or empty is answered with "Username required", so both are allowed here. */
export const searchUsersQuerySchema = z.object({
  username: z.string().optional(),
});
export type SearchUsersQuery = z.infer<typeof searchUsersQuerySchema>;

export const USER_ID_INVALID_MESSAGE = 'user_id must be a snowflake id (decimal digits)';

/** A route's `:user_id` (`/users/{user_id}`, relationships, avatars): not a snowflake is 400 `invalid_user_id`. */
export const userIdParamSchema = z.object({ user_id: snowflakeParam('invalid_user_id', USER_ID_INVALID_MESSAGE) });
