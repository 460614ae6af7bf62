import { route, type Route } from '../http/route.ts';
import type { FeaturesService } from './service.ts';

export function featuresRoutes(features: FeaturesService): Route[] {
  return [
    route({
      method: 'GET',
      path: '/users/@me/features',
      handler: (ctx) => features.of(ctx.principal.userId),
    }),
  ];
}
