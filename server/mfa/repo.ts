import type { UserFile } from '../storage/index.ts';

/**
 * The second factor of one user, in their own file (tables `totp` and `totp_backup_codes`, see
 * storage/schema.ts). The TOTP secret is kept as it is, not encrypted: why is in service.ts.
 */
export interface TotpRow {
  /** Set while 2FA is on. */
  secret: Buffer | null;
  /** Set while a setup waits for its first code. */
  pending_secret: Buffer | null;
  /** The newest time step a code was accepted for: that step and older ones are refused. */
  last_step: number;
}

export function readTotp(file: UserFile): TotpRow | undefined {
  return file.stmt('SELECT secret, pending_secret, last_step FROM totp').get() as TotpRow | undefined;
}

export function isTotpEnabled(file: UserFile): boolean {
  return file.stmt('SELECT 1 FROM totp WHERE secret IS NOT NULL').get() !== undefined;
}

/** Starts a setup, replacing a pending one (the caller checked that 2FA is off). */
export function savePendingSecret(file: UserFile, secret: Buffer): void {
  file
    .stmt('INSERT INTO totp (singleton, pending_secret) VALUES (1, ?) ON CONFLICT (singleton) DO UPDATE SET pending_secret = excluded.pending_secret')
    .run(secret);
}

/** The pending secret becomes the secret; `step` is the one its first code was accepted for. */
export function enableTotp(file: UserFile, step: number, now: number): void {
  file.stmt('UPDATE totp SET secret = pending_secret, pending_secret = NULL, enabled_at = ?, last_step = ? WHERE pending_secret IS NOT NULL').run(now, step);
}

/**
 * Records `step` as used; false if a step as new or newer was recorded meanwhile. The caller
 * checked under the same write lock, so this is the second guard, in the statement itself.
 */
export function useTotpStep(file: UserFile, step: number): boolean {
  return file.stmt('UPDATE totp SET last_step = ? WHERE secret IS NOT NULL AND last_step < ?').run(step, step).changes === 1;
}

/** Removes 2FA: the secret, the used-step mark and every backup code. */
export function deleteTotp(file: UserFile): void {
  file.stmt('DELETE FROM totp').run();
  file.stmt('DELETE FROM totp_backup_codes').run();
}

export function replaceBackupCodes(file: UserFile, digests: Buffer[]): void {
  file.stmt('DELETE FROM totp_backup_codes').run();
  const insert = file.stmt('INSERT INTO totp_backup_codes (digest) VALUES (?)');
  for (const digest of digests) insert.run(digest);
}

/** Spends the backup code with this digest; false when there is none (never issued, or used). */
export function useBackupCode(file: UserFile, digest: Buffer): boolean {
  return file.stmt('DELETE FROM totp_backup_codes WHERE digest = ?').run(digest).changes === 1;
}
