import { z } from 'zod';

/**
 * Two-factor authentication (TOTP, RFC 6238: SHA-1, 6 digits, 30 s) and its backup codes. Codes are
 * taken as text of any shape up to a bound: a code that is not six digits (or not a backup code)
 * is simply a wrong code, answered like one, not a validation error that would tell the two apart.
 */
const CODE_MAX_LENGTH = 64;
const codeSchema = z.string().max(CODE_MAX_LENGTH, { message: `Must be at most ${CODE_MAX_LENGTH} characters` });
/** The account password, re-checked by the routes that change or remove the second factor. */
const passwordSchema = z.string().max(1024);

/** Number of backup codes a set holds. */
export const BACKUP_CODE_COUNT = 10;

/** `POST /users/@me/totp/setup`: starts (or restarts) a pending setup. */
export const totpSetupBodySchema = z.strictObject({
  password: passwordSchema,
});
export type TotpSetupBody = z.infer<typeof totpSetupBodySchema>;

export interface TotpSetupResponse {
  /** Base32 (RFC 4648, no padding): what an authenticator app asks for when typed in by hand. */
  secret: string;
  /** `otpauth://totp/...`: what a QR code for authenticator apps holds. */
  otpauth_url: string;
}

/** `POST /users/@me/totp/enable`: a code of the pending secret turns 2FA on. */
export const totpEnableBodySchema = z.strictObject({
  code: codeSchema,
});
export type TotpEnableBody = z.infer<typeof totpEnableBodySchema>;

/** `POST /users/@me/totp/disable` and `POST /users/@me/totp/backup-codes`: `code` is a TOTP or a backup code. */
export const totpConfirmBodySchema = z.strictObject({
  password: passwordSchema,
  code: codeSchema,
});
export type TotpConfirmBody = z.infer<typeof totpConfirmBodySchema>;

/** Shown once: only their hashes are kept. */
export interface BackupCodesResponse {
  backup_codes: string[];
}

/** `POST /auth/login/totp`: the ticket `POST /auth/login` answered, and either a TOTP or a backup code. */
export const loginTotpBodySchema = z
  .strictObject({
    ticket: z.string().max(256),
    code: codeSchema.optional(),
    backup_code: codeSchema.optional(),
  })
  .refine((body) => (body.code === undefined) !== (body.backup_code === undefined), {
    message: 'Give exactly one of code and backup_code',
    path: ['code'],
  });
export type LoginTotpBody = z.infer<typeof loginTotpBodySchema>;
