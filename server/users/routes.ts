import { searchUsersQuerySchema, updateMeBodySchema, userIdParamSchema } from '../../shared/schemas/users.ts';
import { USERNAME_PATTERN } from '../../shared/schemas/common.ts';
import { AppError } from '../core/app-error.ts';
import type { Throttles } from '../core/throttle.ts';
import { route, type Route } from '../http/route.ts';
import type { UsersService } from './service.ts';

/** A client address may search this many times what one account may: several accounts can share one (NAT, an office). */
const SEARCH_ADDRESS_FACTOR = 10;

export function usersRoutes(users: UsersService, options: { searchesPerMinute: number; throttles: Throttles }): Route[] {
  // Search tells whether a username exists: it is budgeted per account and per client address, so
  // neither one account nor many accounts from one address can enumerate the users.
  const searchPerAccount = options.throttles({ name: 'search-account', points: options.searchesPerMinute, durationSeconds: 60 });
  const searchPerAddress = options.throttles({ name: 'search-address', points: options.searchesPerMinute * SEARCH_ADDRESS_FACTOR, durationSeconds: 60 });
  return [
    route({
      method: 'GET',
      path: '/users/@me',
      handler: (ctx) => users.privateUser(ctx.principal.userId),
    }),
    route({
      method: 'PATCH',
      path: '/users/@me',
      body: updateMeBodySchema,
      handler: (ctx) => users.updateMe(ctx.principal, ctx.body),
    }),
    route({
      method: 'GET',
      path: '/users/search',
      query: searchUsersQuerySchema,
      rateLimiter: searchPerAddress,
      handler: async (ctx) => {
        await searchPerAccount.consume(ctx.principal.userId);
        const username = ctx.query.username?.trim();
        if (!username) throw new AppError('username_required', 'The username query parameter is required');
        // A name no account can have cannot match: answer without a lookup.
        if (!USERNAME_PATTERN.test(username)) throw new AppError('user_not_found', 'No user with that username');
        return users.findByUsername(username);
      },
    }),
    route({
      method: 'GET',
      path: '/users/:user_id',
      params: userIdParamSchema,
      handler: (ctx) => users.publicUser(ctx.params.user_id),
    }),
  ];
}
