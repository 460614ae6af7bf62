import { userIdParamSchema } from '../../shared/schemas/users.ts';
import { avatarUploadFormSchema } from '../../shared/schemas/avatars.ts';
import { AppError } from '../core/app-error.ts';
import { parseMultipart } from '../http/multipart.ts';
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
      handler: (ctx) => avatars.upload(ctx.principal.userId, uploadedFile(ctx.headers.get('content-type'), ctx.body)),
    }),
    route({
      method: 'DELETE',
      path: '/users/@me/avatar',
      handler: async (ctx) => {
        await avatars.remove(ctx.principal.userId);
        return Reply.noContent();
      },
    }),
    route({
      method: 'GET',
      path: '/avatars/users/:user_id',
      auth: 'none',
      params: userIdParamSchema,
      // Cluster mode: the image is in the user's file, served by the node that serves the user.
      placeBy: (ctx) => ctx.params.user_id,
      handler: (ctx) => {
        const image = avatars.image(ctx.params.user_id);
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

/**
 * The image file of an upload: the transport's business (multipart framing, form fields), so the
 * service sees only the file's bytes. The part's declared content type is ignored: the service
 * judges the bytes themselves.
 */
function uploadedFile(contentType: string | undefined, body: Buffer): Uint8Array {
  const parts = parseMultipart(body, contentType);
  if (parts === null) {
    throw new AppError('unsupported_media_type', 'Send the image as multipart/form-data in a file field named "file"');
  }
  const form = avatarUploadFormSchema.safeParse({ file: parts.find((part) => part.name === 'file')?.data });
  if (!form.success) {
    throw new AppError('invalid_input', 'Validation failed', {
      errors: form.error.issues.map((issue) => ({ path: issue.path.join('.') || 'file', message: issue.message })),
    });
  }
  return form.data.file;
}

/** RFC 9110 If-None-Match: a list of (possibly weak) tags, or `*`. */
function matchesEtag(header: string | undefined, etag: string): boolean {
  if (header === undefined) return false;
  return header.split(',').some((tag) => {
    const trimmed = tag.trim();
    return trimmed === '*' || trimmed.replace(/^W\//, '') === etag;
  });
}
