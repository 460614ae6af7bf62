import {
  channelParamsSchema,
  createMessageBodySchema,
  listMessagesQuerySchema,
  messageParamsSchema,
  updateMessageBodySchema,
} from '../../shared/schemas/notes.ts';
import { Reply, route, type Route } from '../http/route.ts';
import type { NotesService } from './service.ts';

export function notesRoutes(notes: NotesService): Route[] {
  return [
    route({
      method: 'GET',
      path: '/users/@me/notes',
      handler: (ctx) => notes.channel(ctx.principal.userId),
    }),
    route({
      method: 'GET',
      path: '/channels/:channel_id/messages',
      query: listMessagesQuerySchema,
      params: channelParamsSchema,
      handler: (ctx) => notes.list(ctx.principal.userId, ctx.params.channel_id, ctx.query),
    }),
    route({
      method: 'POST',
      path: '/channels/:channel_id/messages',
      body: createMessageBodySchema,
      params: channelParamsSchema,
      handler: (ctx) => Reply.json(201, notes.create(ctx.principal.userId, ctx.params.channel_id, ctx.body.content)),
    }),
    route({
      method: 'PATCH',
      path: '/channels/:channel_id/messages/:message_id',
      body: updateMessageBodySchema,
      params: messageParamsSchema,
      handler: (ctx) => notes.update(ctx.principal.userId, ctx.params.channel_id, ctx.params.message_id, ctx.body.content),
    }),
    route({
      method: 'DELETE',
      path: '/channels/:channel_id/messages/:message_id',
      params: messageParamsSchema,
      handler: (ctx) => {
        notes.remove(ctx.principal.userId, ctx.params.channel_id, ctx.params.message_id);
        return Reply.noContent();
      },
    }),
  ];
}
