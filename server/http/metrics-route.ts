import { AppError } from '../core/app-error.ts';
import type { MetricsExposition } from '../metrics/exposition.ts';
import { Reply, route, type Route } from './route.ts';

/**
 * `GET /metrics`: the Prometheus text format. With a metrics token, a scrape without it (or with
 * another) gets the documented 401, as any route would for a missing bearer token.
 */
export function metricsRoute(metrics: MetricsExposition): Route {
  return route({
    method: 'GET',
    path: '/metrics',
    auth: 'none',
    handler: async ({ headers }) => {
      if (!metrics.authorizes(headers.get('authorization'))) {
        throw new AppError('unauthorized', 'A valid metrics token is required', { headers: { 'WWW-Authenticate': 'Bearer' } });
      }
      return Reply.bytes(200, Buffer.from(await metrics.render()), metrics.contentType);
    },
  });
}
