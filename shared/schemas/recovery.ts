import { z } from 'zod';
import { emailSchema, passwordSchema } from './common.ts';

/**
 * A token from a mail (`pxv_…` verifies an address, `pxr_…` resets a password). Bounded only: any
 * string the server does not know is answered `invalid_mail_token`, whatever its shape, so the
 * answer never says whether a string merely looked wrong or was a token once.
 */
const mailTokenSchema = z.string().min(1).max(256);

export const verifyEmailBodySchema = z.strictObject({ token: mailTokenSchema });

export const forgotPasswordBodySchema = z.strictObject({ email: emailSchema });

/** `password` follows the rules of a password change (strength judged by `passwordWeakness`). */
export const resetPasswordBodySchema = z.strictObject({ token: mailTokenSchema, password: passwordSchema });
export type ResetPasswordBody = z.infer<typeof resetPasswordBodySchema>;
