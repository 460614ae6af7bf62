import { loginBodySchema, registerBodySchema } from '../../shared/schemas/auth.ts';
import { sessionIdParamSchema } from '../../shared/schemas/sessions.ts';
import type { Throttles } from '../core/throttle.ts';
import { Reply, route, type Route } from '../http/route.ts';
import type { AuthService } from './service.ts';

export function authRoutes(auth: AuthService, options: { attemptsPerMinute: number; throttles: Throttles }): Route[] {
  // One budget per client address shared by login and register: guessing passwords and
  // probing for taken usernames are the same attack. Login's per-account budgets are the service's.
  const rateLimiter = options.throttles({ name: 'auth-address', points: options.attemptsPerMinute, durationSeconds: 60 });
  return [
    route({
      method: 'POST',
      path: '/auth/register',
      auth: 'none',
      body: registerBodySchema,
      rateLimiter,
      handler: async (ctx) => Reply.json(201, await auth.register(ctx.body, ctx.headers.get('user-agent') ?? null)),
    }),
    route({
      method: 'POST',
      path: '/auth/login',
      auth: 'none',
      body: loginBodySchema,
      rateLimiter,
      // Cluster mode: served by the node that serves the account named (its file holds the
      // password hash and the second factor); a login naming none is answered here.
      placeBy: (ctx) => auth.accountOfLogin(ctx.body.login),
      handler: (ctx) => auth.login(ctx.body, { userAgent: ctx.headers.get('user-agent') ?? null, address: ctx.remoteAddress }),
    }),
    route({
      method: 'POST',
      path: '/auth/logout',
      handler: async (ctx) => {
        await auth.logout(ctx.principal);
        return Reply.noContent();
      },
    }),
    route({
      method: 'GET',
      path: '/auth/sessions',
      handler: (ctx) => auth.listSessions(ctx.principal),
    }),
    route({
      method: 'POST',
      path: '/auth/sessions/revoke-others',
      handler: async (ctx) => {
        await auth.endOtherSessions(ctx.principal);
        return Reply.noContent();
      },
    }),
    route({
      method: 'DELETE',
      path: '/auth/sessions/:session_id',
      params: sessionIdParamSchema,
      handler: async (ctx) => {
        await auth.endSession(ctx.principal, ctx.params.session_id);
        return Reply.noContent();
      },
    }),
  ];
}
