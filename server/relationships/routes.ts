import { putRelationshipBodySchema } from '../../shared/schemas/relationships.ts';
import { isSnowflake } from '../../shared/snowflake.ts';
import { AppError } from '../core/app-error.ts';
import { Reply, route, type Route } from '../http/route.ts';
import type { RelationshipsService } from './service.ts';

function userIdParam(params: Record<string, string>): string {
  const id = params.user_id ?? '';
  if (!isSnowflake(id)) throw new AppError('invalid_user_id', 'user_id must be a snowflake id (decimal digits)');
  return id;
}

export function relationshipsRoutes(relationships: RelationshipsService): Route[] {
  return [
    route({
      method: 'GET',
      path: '/users/@me/relationships',
      handler: (ctx) => relationships.list(ctx.principal.userId),
    }),
    route({
      method: 'PUT',
      path: '/users/@me/relationships/:user_id',
      body: putRelationshipBodySchema,
      handler: (ctx) => relationships.put(ctx.principal.userId, userIdParam(ctx.params), ctx.body),
    }),
    route({
      method: 'DELETE',
      path: '/users/@me/relationships/:user_id',
      handler: (ctx) => {
        relationships.remove(ctx.principal.userId, userIdParam(ctx.params));
        return Reply.noContent();
      },
    }),
  ];
}
