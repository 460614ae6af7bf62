import { createHash, randomBytes } from 'node:crypto';

/** `pxc_` makes leaked tokens easy to spot for secret scanners; 256 random bits follow. */
const TOKEN_PREFIX = 'pxc_';

export function newSessionToken(): string {
  return TOKEN_PREFIX + randomBytes(32).toString('base64url');
}

/** Only this digest is stored: a leaked database does not yield usable tokens. */
export function hashSessionToken(token: string): Buffer {
  return createHash('sha256').update(token).digest();
}
