import { updateMessagingSettingsBodySchema } from '../../shared/schemas/messaging-settings.ts';
import { route, type Route } from '../http/route.ts';
import { updateSettingsBodySchema } from '../../shared/schemas/settings.ts';
import type { MessagingSettingsService } from './messaging-service.ts';
import type { UserSettingsService } from './user-settings-service.ts';

export function settingsRoutes(messaging: MessagingSettingsService, settings: UserSettingsService): Route[] {
  return [
    route({
      method: 'GET',
      path: '/users/@me/settings',
      handler: (ctx) => settings.get(ctx.principal.userId),
    }),
    route({
      method: 'PATCH',
      path: '/users/@me/settings',
      body: updateSettingsBodySchema,
      handler: (ctx) => settings.update(ctx.principal.userId, ctx.body),
    }),
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
