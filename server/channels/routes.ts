import { RECIPIENT_ID_REQUIRED_MESSAGE, openDmBodySchema } from '../../shared/schemas/channels.ts';
import { AppError } from '../core/app-error.ts';
import { route, type Route } from '../http/route.ts';
import type { ChannelsService } from './service.ts';

export function channelsRoutes(channels: ChannelsService): Route[] {
  return [
    route({
      method: 'GET',
      path: '/users/@me/channels',
      handler: (ctx) => channels.list(ctx.principal.userId),
    }),
    route({
      method: 'POST',
      path: '/users/@me/channels',
      body: openDmBodySchema,
      // The spec documents two errors for recipient_id; anything else (unknown fields, a body that
      // is not an object) stays the generic "Invalid input".
      invalid: (issues) => {
        const issue = issues.find((i) => i.path.length === 1 && i.path[0] === 'recipient_id');
        if (!issue) return undefined;
        return issue.message === RECIPIENT_ID_REQUIRED_MESSAGE
          ? new AppError('recipient_id_required', issue.message)
          : new AppError('invalid_recipient_id', issue.message);
      },
      handler: (ctx) => channels.open(ctx.principal.userId, ctx.body.recipient_id),
    }),
  ];
}
