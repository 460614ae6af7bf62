import { updateMessagingSettingsBodySchema } from '../../shared/schemas/messaging-settings.ts';
import { route, type Route } from '../http/route.ts';
import type { MessagingSettingsService } from './service.ts';

export function settingsRoutes(messaging: MessagingSettingsService): Route[] {
  return [
    route({
      method: 'GET',
      path: '/users/@me/messaging-settings',
      handler: (ctx) => messaging.get(ctx.principal.userId),
    }),
    route({
      method: 'PATCH',
      path: '/users/@me/messaging-settings',
      body: updateMessagingSettingsBodySchema,
      handler: (ctx) => messaging.update(ctx.principal.userId, ctx.body),
    }),
  ];
}
