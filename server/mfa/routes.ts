import { loginTotpBodySchema, totpConfirmBodySchema, totpEnableBodySchema, totpSetupBodySchema } from '../../shared/schemas/mfa.ts';
import type { Throttles } from '../core/throttle.ts';
import { Reply, route, type Route } from '../http/route.ts';
import { MFA_THROTTLE_WINDOW_S, type MfaService } from './service.ts';
import { ticketUser } from './tickets.ts';

export function mfaRoutes(mfa: MfaService, options: { attemptsPerAddress: number; throttles: Throttles }): Route[] {
  // One budget per client address over every route that checks a code or a password here: an
  // attacker spreading guesses over many accounts (each under its own per-account budget, which
  // the service counts) is slowed down by where the guesses come from.
  const rateLimiter = options.throttles({ name: 'totp-address', points: options.attemptsPerAddress, durationSeconds: MFA_THROTTLE_WINDOW_S });
  return [
    route({
      method: 'POST',
      path: '/users/@me/totp/setup',
      body: totpSetupBodySchema,
      rateLimiter,
      handler: (ctx) => mfa.setup(ctx.principal.userId, ctx.body),
    }),
    route({
      method: 'POST',
      path: '/users/@me/totp/enable',
      body: totpEnableBodySchema,
      rateLimiter,
      handler: (ctx) => mfa.enable(ctx.principal.userId, ctx.body),
    }),
    route({
      method: 'POST',
      path: '/users/@me/totp/disable',
      body: totpConfirmBodySchema,
      rateLimiter,
      handler: async (ctx) => {
        await mfa.disable(ctx.principal.userId, ctx.body);
        return Reply.noContent();
      },
    }),
    route({
      method: 'POST',
      path: '/users/@me/totp/backup-codes',
      body: totpConfirmBodySchema,
      rateLimiter,
      handler: (ctx) => mfa.regenerateBackupCodes(ctx.principal.userId, ctx.body),
    }),
    route({
      method: 'POST',
      path: '/auth/login/totp',
      auth: 'none',
      body: loginTotpBodySchema,
      rateLimiter,
      // Cluster mode: served by the node that serves the account, which issued the ticket and
      // holds it (the user the ticket names; one moved since finds no ticket there: 401).
      placeBy: (ctx) => ticketUser(ctx.body.ticket),
      handler: (ctx) => mfa.completeLogin(ctx.body),
    }),
  ];
}
