import { z } from 'zod';
import { emailSchema, passwordSchema, usernameSchema } from './common.ts';
import { deviceNameSchema } from './sessions.ts';
import type { PrivateUser } from './users.ts';

export const registerBodySchema = z.strictObject({
  username: usernameSchema,
  email: emailSchema,
  password: passwordSchema,
});
export type RegisterBody = z.infer<typeof registerBodySchema>;

export const loginBodySchema = z.strictObject({
  /** Username or email, any case. */
  login: z.string().min(1).max(254),
  password: z.string().min(1).max(1024),
  /** Names the session in `GET /auth/sessions`; without it the name is derived from the User-Agent. */
  device_name: deviceNameSchema.optional(),
});
export type LoginBody = z.infer<typeof loginBodySchema>;

export interface AuthResponse {
  token: string;
  user: PrivateUser;
}

/**
 * `POST /auth/login` for an account with 2FA: no session yet. `ticket` goes to `POST /auth/login/totp`
 * with a code; it is single-use, lasts 5 minutes and allows 5 attempts.
 */
export interface MfaRequiredResponse {
  mfa_required: true;
  ticket: string;
}

/** What `POST /auth/login` answers: a session, or (2FA) a ticket for the second step. */
export type LoginResponse = AuthResponse | MfaRequiredResponse;
