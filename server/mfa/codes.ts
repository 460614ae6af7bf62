import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { HOTP, Secret, TOTP } from 'otpauth';
import { BACKUP_CODE_COUNT } from '../../shared/schemas/mfa.ts';

/**
 * The codes of the second factor: TOTP (RFC 6238 with the parameters every authenticator app
 * assumes: SHA-1, 6 digits, 30 s steps) and backup codes. Pure functions; what is stored and
 * which step was used live in the service and its repo.
 */

const ISSUER = 'Plexichat';
const PERIOD_S = 30;
const DIGITS = 6;
/** 160 bits, the HMAC-SHA-1 key length RFC 4226 recommends. */
const SECRET_BYTES = 20;
/** Steps accepted on either side of the current one: clocks drift, and typing a code takes time. */
const STEP_WINDOW = 1;

export function newTotpSecret(): Buffer {
  return randomBytes(SECRET_BYTES);
}

export function base32Of(secret: Buffer): string {
  return secretOf(secret).base32;
}

/** The `otpauth://` URL authenticator apps read from a QR code. */
export function otpauthUrlOf(secret: Buffer, accountName: string): string {
  return new TOTP({ issuer: ISSUER, label: accountName, secret: secretOf(secret), algorithm: 'SHA1', digits: DIGITS, period: PERIOD_S }).toString();
}

/** The TOTP time step of an instant (milliseconds since the epoch). */
function stepAt(ms: number): number {
  return Math.floor(ms / 1000 / PERIOD_S);
}

/**
 * The step `code` belongs to, among the current step ±1 and only those after `lastStep` (the newest
 * step this account already used), or null. Refusing every step up to `lastStep` refuses a replay
 * of a used code and any code older than it (RFC 6238 §5.2). Codes are compared in constant time.
 */
export function matchTotpStep(secret: Buffer, code: string, nowMs: number, lastStep: number): number | null {
  const given = totpShape(code);
  if (given === null) return null;
  const now = stepAt(nowMs);
  const key = secretOf(secret);
  for (let step = now - STEP_WINDOW; step <= now + STEP_WINDOW; step += 1) {
    if (step <= lastStep) continue;
    const expected = HOTP.generate({ secret: key, algorithm: 'SHA1', digits: DIGITS, counter: step });
    if (timingSafeEqual(Buffer.from(expected), Buffer.from(given))) return step;
  }
  return null;
}

/** Six digits, with the space authenticator apps show in the middle allowed; else null. */
function totpShape(code: string): string | null {
  const digits = code.replace(/\s+/g, '');
  return /^[0-9]{6}$/.test(digits) ? digits : null;
}

/**
 * Backup codes: 16 characters of Crockford's base32 (no i, l, o, u: nothing to misread), 80 random
 * bits each, shown as four groups of four. 80 bits make a stored digest useless to an offline
 * search, so a plain SHA-256 suffices (no slow hash, whose cost an attacker could make the server
 * pay on every login attempt).
 */
const BACKUP_ALPHABET = '0123456789abcdefghjkmnpqrstvwxyz';
const BACKUP_CODE_CHARS = 16;

export function newBackupCodes(): string[] {
  const codes = new Set<string>();
  while (codes.size < BACKUP_CODE_COUNT) codes.add(newBackupCode());
  return [...codes];
}

function newBackupCode(): string {
  const bytes = randomBytes((BACKUP_CODE_CHARS * 5) / 8);
  let bits = 0;
  let value = 0;
  let out = '';
  for (const byte of bytes) {
    // Only the bits not yet turned into characters matter (fewer than 13): keep those.
    value = ((value << 8) | byte) & 0xffff;
    bits += 8;
    while (bits >= 5) {
      bits -= 5;
      out += BACKUP_ALPHABET[(value >> bits) & 31];
    }
  }
  return out.match(/.{4}/g)?.join('-') ?? out;
}

/**
 * The digest a backup code is stored and looked up by, or null for text that cannot be one. Case,
 * spaces and hyphens do not matter, and the letters Crockford's base32 leaves out are read as the
 * digits they look like (i, l → 1; o → 0).
 */
export function backupCodeDigest(input: string): Buffer | null {
  const normalized = input
    .toLowerCase()
    .replace(/[\s-]+/g, '')
    .replace(/[il]/g, '1')
    .replace(/o/g, '0');
  if (normalized.length !== BACKUP_CODE_CHARS || [...normalized].some((c) => !BACKUP_ALPHABET.includes(c))) return null;
  return createHash('sha256').update(normalized).digest();
}

function secretOf(secret: Buffer): Secret {
  // A copy: Secret keeps the buffer, and a Buffer may be a view into a larger shared pool.
  return new Secret({ buffer: Uint8Array.from(secret).buffer });
}
