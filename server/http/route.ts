import { z } from 'zod';
import type { AppError } from '../core/app-error.ts';
import type { Principal } from '../core/principal.ts';
import type { Throttle } from '../core/throttle.ts';

export type Method = 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';

/** Where an input the route validates comes from; field errors name it when the whole input is wrong. */
export type InputSource = 'body' | 'query' | 'params';

/** A raw request body (multipart uploads): the route says how much it may be. */
export interface RawBodySpec {
  kind: 'raw';
  maxBytes: number;
  /** Answer for a body over `maxBytes`; defaults to 413 `Payload too large`. */
  tooLarge?: () => AppError;
}

export interface RequestContext<Body, Query, Params, Auth> {
  method: Method;
  path: string;
  /** The path's `:name` segments, URL-decoded; validated by the route's `params` schema when it has one. */
  params: Params;
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

export interface RouteSpec<Body, Query, A extends AuthMode, Params> {
  method: Method;
  /** Segments; `:name` captures one segment into `params.name`. */
  path: string;
  /** Defaults to 'required'. */
  auth?: A;
  body?: z.ZodType<Body> | RawBodySpec;
  query?: z.ZodType<Query>;
  /**
   * Validates the path parameters (an object keyed by the path's `:names`). Checked after the body
   * and the query, where handlers used to check them, so which answer wins when several inputs are
   * wrong is unchanged.
   */
  params?: z.ZodType<Params>;
  /**
   * Turns a failed body/query/params validation into a route-specific documented error. Without
   * one (or when it returns undefined), an issue that carries its own error code answers with it
   * (see `snowflakeParam` in shared/schemas/common.ts), anything else is 400 `invalid_input`.
   */
  invalid?: (issues: z.core.$ZodIssue[], source: InputSource) => AppError | undefined;
  /** Limits attempts per client address (e.g. login), answered with 429 and Retry-After. */
  rateLimiter?: Throttle;
  /**
   * Cluster mode, for a route without a session that reads or writes a user's file (a login, a
   * mailed token, a public avatar): the user whose owner node must serve it, or undefined to serve
   * it where it arrived. Computed from the validated request, after the body is read and the rate
   * limit counted; the request is then relayed to that owner as a signed-in one is to its caller's
   * (a signed-in route is always placed by its caller, so only `auth: 'none'` routes take this).
   * Never called on a single server.
   */
  placeBy?: (ctx: RequestContext<Body, Query, Params, null>) => string | undefined | Promise<string | undefined>;
  handler: (ctx: RequestContext<Body, Query, Params, A extends 'none' ? null : Principal>) => unknown;
}

/** A route with its types erased, as the dispatcher stores it. */
export interface Route {
  method: Method;
  path: string;
  auth: AuthMode;
  body: z.ZodType | RawBodySpec | undefined;
  query: z.ZodType | undefined;
  params: z.ZodType | undefined;
  invalid: RouteSpec<unknown, unknown, AuthMode, unknown>['invalid'];
  rateLimiter: Throttle | undefined;
  placeBy: ((ctx: RequestContext<unknown, unknown, unknown, null>) => string | undefined | Promise<string | undefined>) | undefined;
  handler: (ctx: RequestContext<unknown, unknown, unknown, Principal | null>) => unknown;
}

/**
 * Declares a route; the handler's context is typed from the schemas and the auth mode. (`Params`
 * comes last so that routes naming their body type, `route<Buffer>(…)`, keep compiling.)
 */
export function route<Body = undefined, Query = Record<string, string>, A extends AuthMode = 'required', Params = Record<string, string>>(
  spec: RouteSpec<Body, Query, A, Params>,
): Route {
  if (spec.params !== undefined) assertParamsMatchPath(spec.method, spec.path, spec.params);
  if (spec.placeBy !== undefined && spec.auth !== 'none') {
    throw new Error(`route ${spec.method} ${spec.path}: placeBy is for routes without a session (a signed-in one is served where its caller is)`);
  }
  return {
    method: spec.method,
    path: spec.path,
    auth: spec.auth ?? 'required',
    body: spec.body as Route['body'],
    query: spec.query as Route['query'],
    params: spec.params as Route['params'],
    invalid: spec.invalid,
    rateLimiter: spec.rateLimiter,
    placeBy: spec.placeBy as Route['placeBy'],
    handler: spec.handler as Route['handler'],
  };
}

/**
 * A params schema naming a parameter the path does not have would refuse every request with a
 * "Required" field error: caught when the route is declared instead (object schemas only).
 */
function assertParamsMatchPath(method: Method, path: string, schema: z.ZodType): void {
  if (!(schema instanceof z.ZodObject)) return;
  const inPath = new Set(path.split('/').flatMap((segment) => (segment.startsWith(':') ? [segment.slice(1)] : [])));
  const missing = Object.keys(schema.shape).filter((name) => !inPath.has(name));
  if (missing.length > 0) {
    throw new Error(`route ${method} ${path}: its params schema names ${missing.map((name) => `:${name}`).join(', ')}, which the path lacks`);
  }
}

export function isRawBodySpec(body: Route['body']): body is RawBodySpec {
  return typeof body === 'object' && body !== null && (body as RawBodySpec).kind === 'raw';
}
