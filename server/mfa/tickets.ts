import { createHash, randomBytes } from 'node:crypto';
import { isSnowflake } from '../../shared/snowflake.ts';

/**
 * Sign-in tickets (the second step of a 2FA login): `pxt_<user id>_<256 random bits>`. `pxt_`
 * tells a leaked ticket from a session token (`pxc_`). The user id lets any node of a cluster send
 * the second step to the node that serves the account, the one holding the ticket in its memory;
 * it is never believed beyond that: the ticket is found (or not) by its digest alone.
 */
const TICKET = /^pxt_([0-9]{1,20})_[A-Za-z0-9_-]{43}$/;

export function newTicket(userId: string): string {
  return `pxt_${userId}_${randomBytes(32).toString('base64url')}`;
}

/** The user a ticket says it is for; undefined for anything not shaped as a ticket. */
export function ticketUser(ticket: string): string | undefined {
  const userId = TICKET.exec(ticket)?.[1];
  return isSnowflake(userId) ? userId : undefined;
}

/** What a ticket is held under: the ticket itself never is. */
export function ticketKey(ticket: string): string {
  return createHash('sha256').update(ticket).digest('base64');
}
