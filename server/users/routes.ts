import { searchUsersQuerySchema, updateMeBodySchema, userIdParamSchema } from '../../shared/schemas/users.ts';
import { USERNAME_PATTERN } from '../../shared/schemas/common.ts';
import { AppError } from '../core/app-error.ts';
import { route, type Route } from '../http/route.ts';
import type { UsersService } from './service.ts';

export function usersRoutes(users: UsersService): Route[] {
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
      handler: (ctx) => {
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
