import { loginBodySchema, registerBodySchema } from '../../shared/schemas/auth.ts';
import { Throttle } from '../core/throttle.ts';
import { Reply, route, type Route } from '../http/route.ts';
import type { AuthService } from './service.ts';

export function authRoutes(auth: AuthService, options: { attemptsPerMinute: number }): Route[] {
  // One budget per client address shared by login and register: guessing passwords and
  // probing for taken usernames are the same attack.
  const rateLimiter = new Throttle({ name: 'auth-address', points: options.attemptsPerMinute, durationSeconds: 60 });
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
      handler: (ctx) => auth.login(ctx.body, ctx.headers.get('user-agent') ?? null),
    }),
    route({
      method: 'POST',
      path: '/auth/logout',
      handler: (ctx) => {
        auth.logout(ctx.principal);
        return Reply.noContent();
      },
    }),
  ];
}
