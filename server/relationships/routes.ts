import { putRelationshipBodySchema } from '../../shared/schemas/relationships.ts';
import { userIdParamSchema } from '../../shared/schemas/users.ts';
import { Reply, route, type Route } from '../http/route.ts';
import type { RelationshipsService } from './service.ts';

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
      params: userIdParamSchema,
      handler: (ctx) => relationships.put(ctx.principal.userId, ctx.params.user_id, ctx.body),
    }),
    route({
      method: 'DELETE',
      path: '/users/@me/relationships/:user_id',
      params: userIdParamSchema,
      handler: async (ctx) => {
        await relationships.remove(ctx.principal.userId, ctx.params.user_id);
        return Reply.noContent();
      },
    }),
  ];
}
