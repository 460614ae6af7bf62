import { createHash, randomBytes } from 'node:crypto';
import type { MailTokenPurpose } from '../storage/directory-store.ts';

/** Prefixes tell the two kinds apart at a glance (and to secret scanners); 256 random bits follow. */
const PREFIXES: Record<MailTokenPurpose, string> = { verify_email: 'pxv_', reset_password: 'pxr_' };

export function newMailToken(purpose: MailTokenPurpose): string {
  return PREFIXES[purpose] + randomBytes(32).toString('base64url');
}

/**
 * Only this digest is stored: a leaked directory yields no usable link. A fast hash is enough:
 * the token has 256 random bits, nothing to guess from a dictionary.
 */
export function hashMailToken(token: string): Buffer {
  return createHash('sha256').update(token).digest();
}
