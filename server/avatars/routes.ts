import { AppError } from '../core/app-error.ts';
import { Reply, route, type Route } from '../http/route.ts';
import { MULTIPART_OVERHEAD_BYTES } from '../config.ts';
import type { AvatarsService } from './service.ts';

/** `avatar_url` carries `?v=<hash prefix>`: a URL that names one image may be cached for good. */
const IMMUTABLE = 'public, max-age=31536000, immutable';
/** Without the version the URL's image can change: caches keep it but revalidate (cheap 304s). */
const REVALIDATE = 'public, no-cache';

export function avatarsRoutes(avatars: AvatarsService, options: { maxBytes: number }): Route[] {
  const tooLarge = () => new AppError('file_too_large', `The upload exceeds the ${options.maxBytes}-byte file limit`);
  return [
    route<Buffer>({
      method: 'POST',
      path: '/users/@me/avatar',
      body: { kind: 'raw', maxBytes: options.maxBytes + MULTIPART_OVERHEAD_BYTES, tooLarge },
      handler: (ctx) => avatars.upload(ctx.principal.userId, ctx.headers.get('content-type'), ctx.body),
    }),
    route({
      method: 'DELETE',
      path: '/users/@me/avatar',
      handler: (ctx) => {
        avatars.remove(ctx.principal.userId);
        return Reply.noContent();
      },
    }),
    route({
      method: 'GET',
      path: '/avatars/users/:user_id',
      auth: 'none',
      handler: (ctx) => {
        const image = avatars.image(ctx.params.user_id ?? '');
        const etag = `"${image.hash}"`;
        const headers = {
          ETag: etag,
          'Cache-Control': ctx.query.v !== undefined && image.hash.startsWith(ctx.query.v) && ctx.query.v.length >= 8 ? IMMUTABLE : REVALIDATE,
          // Served to <img> tags on other origins: never let a browser sniff it into something else.
          'X-Content-Type-Options': 'nosniff',
          'Content-Security-Policy': "default-src 'none'",
        };
        if (matchesEtag(ctx.headers.get('if-none-match'), etag)) return new Reply(304, undefined, headers);
        return Reply.bytes(200, image.bytes, image.contentType, headers);
      },
    }),
  ];
}

/** RFC 9110 If-None-Match: a list of (possibly weak) tags, or `*`. */
function matchesEtag(header: string | undefined, etag: string): boolean {
  if (header === undefined) return false;
  return header.split(',').some((tag) => {
    const trimmed = tag.trim();
    return trimmed === '*' || trimmed.replace(/^W\//, '') === etag;
  });
}
