import { z } from 'zod';
import { snowflakeParam } from './common.ts';

export const DEVICE_NAME_MAX_LENGTH = 64;

/**
 * A device name the client chose (`POST /auth/login`): shown in the session list, so printable
 * text only. Trimmed; 1-64 characters after that.
 */
export const deviceNameSchema = z
  .string()
  .trim()
  .min(1, { message: 'Must not be empty' })
  .max(DEVICE_NAME_MAX_LENGTH, { message: `Must be at most ${DEVICE_NAME_MAX_LENGTH} characters` })
  // biome-ignore lint/suspicious/noControlCharactersInRegex: refusing control characters is the point
  .refine((name) => !/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/.test(name), { message: 'Must not contain control characters' });

/** One entry of `GET /auth/sessions`: a signed-in device. Times are Unix seconds. */
export interface Session {
  id: string;
  /** What the client named it at login, else derived from its User-Agent ("Firefox on Linux"). */
  device_name: string;
  created_at: number;
  /** When the session was last used; recorded at most once a minute. */
  last_used_at: number;
  /** When it ends unless used again: the idle timeout after last use, capped by the absolute lifetime. */
  expires_at: number;
  /** Whether this is the session of the token that asked. */
  current: boolean;
}

export const SESSION_NOT_FOUND_MESSAGE = 'No such session';

/**
 * `DELETE /auth/sessions/{session_id}`: an id that is not a snowflake names no session, and is
 * answered like someone else's session or one that does not exist (404 `not_found`).
 */
export const sessionIdParamSchema = z.object({ session_id: snowflakeParam('not_found', SESSION_NOT_FOUND_MESSAGE) });
