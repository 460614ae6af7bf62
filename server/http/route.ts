import type { z } from 'zod';
import type { RateLimiterAbstract } from 'rate-limiter-flexible';
import type { AppError } from '../core/app-error.ts';
import type { Principal } from '../core/principal.ts';

export type Method = 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';

/** A raw request body (multipart uploads): the route says how much it may be. */
export interface RawBodySpec {
  kind: 'raw';
  maxBytes: number;
  /** Answer for a body over `maxBytes`; defaults to 413 `Payload too large`. */
  tooLarge?: () => AppError;
}

interface RequestContext<Body, Query, Auth> {
  method: Method;
  path: string;
  params: Record<string, string>;
  query: Query;
  body: Body;
  principal: Auth;
  /** Lower-case header names, copied out of uWS before any await. */
  headers: ReadonlyMap<string, string>;
  remoteAddress: string;
  requestId: string;
}

/** A reply other than "200 with this JSON": another status, raw bytes, extra headers. */
export class Reply {
  constructor(
    readonly status: number,
    readonly body: unknown = undefined,
    readonly headers: Record<string, string> = {},
  ) {}

  static json(status: number, body: unknown, headers: Record<string, string> = {}): Reply {
    return new Reply(status, body, headers);
  }

  static noContent(headers: Record<string, string> = {}): Reply {
    return new Reply(204, undefined, headers);
  }

  /** Bytes sent as they are, with the given content type. */
  static bytes(status: number, bytes: Uint8Array, contentType: string, headers: Record<string, string> = {}): Reply {
    return new Reply(status, new RawBytes(bytes), { 'Content-Type': contentType, ...headers });
  }
}

export class RawBytes {
  constructor(readonly bytes: Uint8Array) {}
}

type AuthMode = 'required' | 'none';

export interface RouteSpec<Body, Query, A extends AuthMode> {
  method: Method;
  /** Segments; `:name` captures one segment into `params.name`. */
  path: string;
  /** Defaults to 'required'. */
  auth?: A;
  body?: z.ZodType<Body> | RawBodySpec;
  query?: z.ZodType<Query>;
  /** Turns a failed body/query validation into a route-specific documented error. */
  invalid?: (issues: z.core.$ZodIssue[], source: 'body' | 'query') => AppError | undefined;
  /** Limits attempts per client address (e.g. login), answered with 429 and Retry-After. */
  rateLimiter?: RateLimiterAbstract;
  handler: (ctx: RequestContext<Body, Query, A extends 'none' ? null : Principal>) => unknown;
}

/** A route with its types erased, as the dispatcher stores it. */
export interface Route {
  method: Method;
  path: string;
  auth: AuthMode;
  body: z.ZodType | RawBodySpec | undefined;
  query: z.ZodType | undefined;
  invalid: RouteSpec<unknown, unknown, AuthMode>['invalid'];
  rateLimiter: RateLimiterAbstract | undefined;
  handler: (ctx: RequestContext<unknown, unknown, Principal | null>) => unknown;
}

/** Declares a route; the handler's context is typed from the schemas and the auth mode. */
export function route<Body = undefined, Query = Record<string, string>, A extends AuthMode = 'required'>(spec: RouteSpec<Body, Query, A>): Route {
  return {
    method: spec.method,
    path: spec.path,
    auth: spec.auth ?? 'required',
    body: spec.body as Route['body'],
    query: spec.query as Route['query'],
    invalid: spec.invalid,
    rateLimiter: spec.rateLimiter,
    handler: spec.handler as Route['handler'],
  };
}

export function isRawBodySpec(body: Route['body']): body is RawBodySpec {
  return typeof body === 'object' && body !== null && (body as RawBodySpec).kind === 'raw';
}
