import { z } from 'zod';
import type { ErrorCode } from '../errors.ts';
import { isSnowflake } from '../snowflake.ts';

export const USERNAME_PATTERN = /^[A-Za-z0-9_.-]{3,32}$/;
export const PASSWORD_MIN_LENGTH = 8;
export const PASSWORD_MAX_LENGTH = 128;
export const EMAIL_MAX_LENGTH = 254;

export const snowflakeSchema = z.string().refine(isSnowflake, { message: 'Must be a snowflake id (decimal digits)' });

/**
 * A snowflake id in a path, whose failure is a documented error of its own rather than
 * `invalid_input`: the issue carries `code` (in `params`), and the server answers that code with
 * `message` (server/http/input.ts). One schema per kind of id, so its answer is written once.
 */
export function snowflakeParam(code: ErrorCode, message: string) {
  return z.string().refine(isSnowflake, { error: message, params: { code } });
}

export const usernameSchema = z.string().regex(USERNAME_PATTERN, { message: 'Must be 3-32 characters: letters, digits, "_", "." or "-"' });

export const emailSchema = z.email({ message: 'Must be a valid email address' }).max(EMAIL_MAX_LENGTH);

/**
 * Type and an upper bound only: a too-short password is a "Weak password", not "Invalid input",
 * so strength is judged separately by `passwordWeakness`.
 */
export const passwordSchema = z.string().max(PASSWORD_MAX_LENGTH, {
  message: `Must be at most ${PASSWORD_MAX_LENGTH} characters`,
});

/** Why a password is too weak, or null when it is acceptable. Shared so clients can pre-check. */
export function passwordWeakness(password: string, context: { username?: string; email?: string } = {}): string | null {
  if ([...password].length < PASSWORD_MIN_LENGTH) return `Password must be at least ${PASSWORD_MIN_LENGTH} characters`;
  const lower = password.toLowerCase();
  if (context.username !== undefined && lower === context.username.toLowerCase()) {
    return 'Password must not be the username';
  }
  if (context.email !== undefined && lower === context.email.toLowerCase()) return 'Password must not be the email';
  if (new Set(password).size === 1) return 'Password must not be one repeated character';
  return null;
}
