import { forgotPasswordBodySchema, resetPasswordBodySchema, verifyEmailBodySchema } from '../../shared/schemas/recovery.ts';
import type { Throttles } from '../core/throttle.ts';
import { Reply, route, type Route } from '../http/route.ts';
import { RESET_PASSWORD_PATH, VERIFY_EMAIL_PATH } from './mails.ts';
import { RESET_PASSWORD_PAGE, VERIFY_EMAIL_PAGE, type Page } from './pages.ts';
import type { RecoveryService } from './service.ts';

export function recoveryRoutes(recovery: RecoveryService, options: { attemptsPerMinute: number; throttles: Throttles }): Route[] {
  // One budget per client address over the four: trying tokens, asking for mails to many
  // addresses and resending are one kind of abuse. The per-account budgets are the service's.
  const rateLimiter = options.throttles({ name: 'recovery-address', points: options.attemptsPerMinute, durationSeconds: 60 });
  return [
    route({ method: 'GET', path: VERIFY_EMAIL_PATH, auth: 'none', handler: () => pageReply(VERIFY_EMAIL_PAGE) }),
    route({
      method: 'POST',
      path: VERIFY_EMAIL_PATH,
      auth: 'none',
      body: verifyEmailBodySchema,
      rateLimiter,
      // Cluster mode (both token routes): served by the node that serves the token's account,
      // whose file the token changes; an unknown token is answered here.
      placeBy: (ctx) => recovery.accountOfToken(ctx.body.token, 'verify_email'),
      handler: async (ctx) => {
        await recovery.verifyEmail(ctx.body.token);
        return Reply.noContent();
      },
    }),
    route({
      method: 'POST',
      path: '/auth/verify-email/resend',
      rateLimiter,
      handler: async (ctx) => {
        await recovery.resendVerification(ctx.principal.userId);
        return Reply.noContent();
      },
    }),
    route({
      method: 'POST',
      path: '/auth/password/forgot',
      auth: 'none',
      body: forgotPasswordBodySchema,
      rateLimiter,
      // Never relayed, even in cluster mode: relaying only the addresses that have an account
      // would tell them apart by the time the answer takes.
      handler: async (ctx) => {
        await recovery.forgotPassword(ctx.body.email);
        return Reply.noContent();
      },
    }),
    route({ method: 'GET', path: RESET_PASSWORD_PATH, auth: 'none', handler: () => pageReply(RESET_PASSWORD_PAGE) }),
    route({
      method: 'POST',
      path: RESET_PASSWORD_PATH,
      auth: 'none',
      body: resetPasswordBodySchema,
      rateLimiter,
      placeBy: (ctx) => recovery.accountOfToken(ctx.body.token, 'reset_password'),
      handler: async (ctx) => {
        await recovery.resetPassword(ctx.body);
        return Reply.noContent();
      },
    }),
  ];
}

function pageReply(page: Page): Reply {
  return Reply.bytes(200, page.html, 'text/html; charset=utf-8', {
    'Content-Security-Policy': page.csp,
    'Referrer-Policy': 'no-referrer',
    'X-Content-Type-Options': 'nosniff',
  });
}
