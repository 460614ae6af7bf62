import { STATUS_CODES } from 'node:http';
import type { Logger } from 'pino';
import { AppError } from '../core/app-error.ts';
import type { Principal } from '../core/principal.ts';
import type { ForwardRequest, ForwardedRequest, Placement, RelayedAnswer } from '../core/placement.ts';
import { clusterUnavailable } from '../core/storage-failure.ts';
import { NotOwnerError, isRetryableStorageError } from '../storage/errors.ts';
import { CLIENT_CLOSED_REQUEST, type HttpMetrics, type RouteRequests } from '../metrics/recorders.ts';
import { UserFileMissingError } from '../storage/user-files.ts';
import { InflightTracker } from './inflight.ts';
import { clientAddress } from './client-address.ts';
import { isJsonMediaType, parseJson, parseQuery, validate } from './input.ts';
import { MemoryBudget, type Reservation } from './memory-budget.ts';
import { createRequestIds } from './request-id.ts';
import { RawBytes, Reply, isRawBodySpec, type Method, type RawBodySpec, type RequestContext, type Route } from './route.ts';
import { Router } from './router.ts';
import type { HttpRequest, HttpResponse, TemplatedApp } from './uws.ts';

export interface HttpOptions {
  logger: Logger;
  maxJsonBodyBytes: number;
  /** Bytes of raw (upload) bodies buffered at once, over all requests; past it uploads get 503. */
  maxUploadMemoryBytes: number;
  /** Synchronous on purpose: a bad token is refused before any body byte is buffered. */
  /** The session of a bearer token, or null; a promise when the directory has to be read. */
  authenticate: (token: string) => Principal | null | Promise<Principal | null>;
  /**
   * Names each request (`X-Request-Id`, the logs). Pass the source the sync socket uses, so REST
   * requests and sync upgrades share one counter; without it the routes get a source of their own.
   */
  nextRequestId?: () => string;
  /** Peer addresses of reverse proxies whose `X-Forwarded-For` is believed (`--trust-proxy`). */
  trustedProxies?: ReadonlySet<string>;
  /**
   * Cluster mode: an authenticated request whose user another node owns is relayed to that node
   * (after its body is read and the route's rate limit counted here) and its answer written back.
   */
  cluster?: { placement: Placement; forward: ForwardRequest };
  /** Where every request is counted, by route and status, with its duration; none when metrics are off. */
  metrics?: HttpMetrics;
}

/** The metrics side of the routes: each route's recorder, found once at mount time, and the rest. */
interface RequestMetrics {
  readonly http: HttpMetrics;
  readonly byRoute: ReadonlyMap<Route, RouteRequests>;
}

/** Times a relayed request may find its owner gone (the user moved meanwhile) before it is answered 503. */
const MAX_MISDIRECTED = 2;

/** What `mountRoutes` sets up once; every request reads it. */
interface Server {
  readonly router: Router;
  readonly options: HttpOptions;
  readonly logger: Logger;
  readonly nextRequestId: () => string;
  readonly trustedProxies: ReadonlySet<string>;
  readonly inflight: InflightTracker;
  readonly uploadMemory: MemoryBudget;
  /** The drain bound of a route that takes a JSON body or none. */
  readonly defaultDrainLimit: number;
  /** Set at shutdown: new requests are refused, and every answer ends its connection. */
  refusing: boolean;
  readonly metrics: RequestMetrics | undefined;
}

/**
 * Where the request body stands: none was sent; it is still on the wire; it was read to its end
 * (kept or discarded); or reading stopped past the drain bound, with the rest of it unread.
 */
type BodyState = 'none' | 'unread' | 'read' | 'abandoned';

/** What a handler is told of its request; on the owner of a relayed request, what the edge node sent. */
interface RequestInfo {
  readonly method: string;
  readonly path: string;
  readonly rawQuery: string;
  /** Lower-case names; a repeated header keeps its last value. */
  readonly headers: Map<string, string>;
  readonly remoteAddress: string;
  readonly requestId: string;
}

/** One request and everything copied out of uWS for it (its `req` is gone once the callback returns). */
interface Exchange extends RequestInfo {
  readonly res: HttpResponse;
  /** How many Content-Length headers came: more than one is refused (see `checkFraming`). */
  readonly contentLengths: number;
  readonly started: number;
  /** The body's declared length; undefined when it is chunked or absent (set by `checkFraming`). */
  declared: number | undefined;
  body: BodyState;
  /** Bytes read in all (kept or discarded) before the rest of an unwanted body is given up on. */
  drainLimit: number;
  /** The framing cannot be trusted (see `checkFraming`): the answer must end the connection. */
  untrustedFraming: boolean;
  aborted: boolean;
  /** `send` ran: the request has had its one answer (or lost it to an abort) and has ended. */
  done: boolean;
  /** Set while the body is being read, so an abort settles the read. */
  onAbort: (() => void) | undefined;
  reservation: Reservation | undefined;
  /** Its route's recorder once routed (metrics on only); until then it counts as unmatched. */
  recorder: RouteRequests | undefined;
}

/**
 * Past its route's limit a body is still read and thrown away, up to the limit again (at least
 * MIN_DRAIN_BYTES more): a client that is still sending cannot read an answer on a connection
 * closed under it (its write fails first, EPIPE), so a moderately oversized upload gets its
 * documented error instead of a network error. Past that bound the connection is closed.
 */
const MIN_DRAIN_BYTES = 1024 * 1024;
const drainLimitFor = (maxBytes: number) => maxBytes + Math.max(maxBytes, MIN_DRAIN_BYTES);
/** How long a client told "too many uploads" should wait before trying again. */
const UPLOAD_RETRY_AFTER_SECONDS = '2';
/** What a route that takes a body gets when none was sent (never written to). */
const EMPTY_BODY = Buffer.alloc(0);

const addressDecoder = new TextDecoder();
const BASE_HEADERS: Record<string, string> = {
  'Access-Control-Allow-Origin': '*',
  'Cache-Control': 'no-store',
};
const JSON_HEADERS: Record<string, string> = { ...BASE_HEADERS, 'Content-Type': 'application/json; charset=utf-8' };
const CORS_PREFLIGHT: Record<string, string> = {
  'Access-Control-Allow-Origin': '*',
  'Access-Control-Allow-Methods': 'GET, POST, PUT, PATCH, DELETE',
  'Access-Control-Allow-Headers': 'Authorization, Content-Type, If-None-Match',
  'Access-Control-Max-Age': '600',
};

/**
 * Serves `routes` on `app`. Does everything a handler should not: abort handling, body limits,
 * JSON parsing, auth, zod validation, error mapping and corked writes. Returns the tracker shutdown
 * waits on; `refuseNew()` makes later requests answer 503 while in-flight ones finish.
 */
export function mountRoutes(
  app: TemplatedApp,
  routes: Route[],
  options: HttpOptions,
): { inflight: InflightTracker; refuseNew(): void; serveForwarded(request: ForwardedRequest, body: Uint8Array | undefined): Promise<RelayedAnswer> } {
  const router = new Router();
  for (const r of routes) router.add(r);
  const server: Server = {
    router,
    options,
    logger: options.logger,
    nextRequestId: options.nextRequestId ?? createRequestIds(),
    trustedProxies: options.trustedProxies ?? new Set(),
    inflight: new InflightTracker(),
    uploadMemory: new MemoryBudget(options.maxUploadMemoryBytes),
    defaultDrainLimit: drainLimitFor(options.maxJsonBodyBytes),
    refusing: false,
    metrics: options.metrics === undefined ? undefined : { http: options.metrics, byRoute: recordersOf(options.metrics, routes) },
  };
  app.any('/*', (res: HttpResponse, req: HttpRequest) => serve(server, res, req));
  return {
    inflight: server.inflight,
    refuseNew() {
      server.refusing = true;
    },
    serveForwarded: (request, body) => serveForwarded(server, request, body),
  };
}

function recordersOf(http: HttpMetrics, routes: Route[]): Map<Route, RouteRequests> {
  return new Map(routes.map((r) => [r, http.forRoute(r.method, r.path)]));
}

/**
 * One request, from the uWS callback to its answer. Every failure, thrown here or by anything that
 * settles later, ends in `fail`; every request ends in exactly one `send`. Fast path: with nothing
 * to wait for, a synchronous handler is answered inside this callback, without a promise or a
 * microtask.
 */
function serve(server: Server, res: HttpResponse, req: HttpRequest): void {
  const x = copyRequest(server, res, req);
  let outcome: unknown;
  try {
    const framingError = checkFraming(x);
    if (framingError !== undefined) {
      deferBadRequest(server, x, framingError);
      return;
    }
    if (server.refusing) throw new AppError('service_unavailable', 'The server is shutting down');
    if (x.method === 'OPTIONS') {
      send(server, x, 204, CORS_PREFLIGHT, undefined);
      return;
    }
    outcome = handle(server, x);
  } catch (error) {
    fail(server, x, error);
    return;
  }
  if (outcome instanceof Promise) {
    outcome.then(
      (result) => respond(server, x, result),
      (error) => fail(server, x, error),
    );
  } else {
    respond(server, x, outcome);
  }
}

/** Copies everything needed from `req` (invalid once the callback returns) and counts the request in flight. */
function copyRequest(server: Server, res: HttpResponse, req: HttpRequest): Exchange {
  const headers = new Map<string, string>();
  let contentLengths = 0;
  req.forEach((key, value) => {
    if (key === 'content-length') contentLengths += 1;
    headers.set(key, value);
  });
  const x: Exchange = {
    res,
    method: req.getCaseSensitiveMethod(),
    path: req.getUrl(),
    rawQuery: req.getQuery() ?? '',
    headers,
    contentLengths,
    remoteAddress: clientAddress(addressDecoder.decode(res.getRemoteAddressAsText()), headers.get('x-forwarded-for'), server.trustedProxies),
    requestId: server.nextRequestId(),
    started: performance.now(),
    declared: undefined,
    body: 'none',
    drainLimit: server.defaultDrainLimit,
    untrustedFraming: false,
    aborted: false,
    done: false,
    onAbort: undefined,
    reservation: undefined,
    recorder: undefined,
  };
  res.onAborted(() => {
    x.aborted = true;
    x.onAbort?.();
  });
  server.inflight.begin();
  return x;
}

/**
 * Reads how the body is framed: exactly one Content-Length of digits, or none (chunked or no body).
 * Returns why the framing cannot be trusted, or undefined when it can.
 */
function checkFraming(x: Exchange): string | undefined {
  if (x.contentLengths > 1) return 'A request must not have more than one Content-Length header';
  const length = x.headers.get('content-length');
  if (length !== undefined && !/^[0-9]+$/.test(length)) return 'Content-Length must be a number of bytes';
  x.declared = length === undefined ? undefined : Number(length);
  x.body = (x.declared ?? 0) > 0 || x.headers.has('transfer-encoding') ? 'unread' : 'none';
  return undefined;
}

/**
 * Answers a request whose framing cannot be trusted. uWS frames the body by the first
 * Content-Length; a proxy in front may have used another, and then what it sent as body would be
 * read here as a request of its own (request smuggling). Answering now would not stop uWS from
 * serving a request that follows in the same packet (its close flag is reset by the next request),
 * so the answer waits for the next turn of the loop: by then uWS has closed the connection itself
 * if such a request came, because this one is still pending. Either way nothing after these
 * headers is ever served, and the answer closes the connection.
 */
function deferBadRequest(server: Server, x: Exchange, message: string): void {
  x.untrustedFraming = true;
  setImmediate(() => fail(server, x, new AppError('bad_request', message)));
}

/**
 * Routes, authenticates and starts on the body: returns the handler's result, or a promise of it
 * when there is a body or a rate limit to wait for. Refusals (404, 405, 401, 413, a full upload
 * budget) are thrown before a byte of the body is kept.
 */
function handle(server: Server, x: Exchange): unknown {
  const match = server.router.match(x.method, x.path);
  if (match.kind === 'not_found') throw new AppError('not_found', `No route for ${x.method} ${x.path}`);
  if (match.kind === 'method_not_allowed') {
    throw new AppError('method_not_allowed', `${x.method} is not allowed here`, { headers: { Allow: match.allowed.join(', ') } });
  }
  const { route, params } = match;
  if (server.metrics !== undefined) x.recorder = server.metrics.byRoute.get(route);
  const raw = isRawBodySpec(route.body) ? route.body : undefined;
  if (raw !== undefined) x.drainLimit = drainLimitFor(raw.maxBytes);
  const authenticated = route.auth === 'required' ? authenticate(server, x) : null;
  if (authenticated instanceof Promise) {
    // A token not seen lately: the directory is read while the body arrives (uWS wants `onData`
    // attached now). A refusal of the body waits for the caller to be known: an unknown token is
    // 401 whatever its body, as when the token is known at once.
    let body: Promise<Buffer | undefined> | undefined;
    try {
      body = startBody(server, x, route, raw);
    } catch (refusal) {
      return authenticated.then(() => {
        throw refusal;
      });
    }
    return authenticated.then(
      (principal) => proceed(server, x, route, params, principal, body),
      (error: unknown) => {
        // Refused: the body is not wanted any more, and must not fail unheard.
        body?.catch(() => undefined);
        throw error;
      },
    );
  }
  return proceed(server, x, route, params, authenticated, startBody(server, x, route, raw));
}

/** The rest of `handle`, once the caller is known. */
function proceed(
  server: Server,
  x: Exchange,
  route: Route,
  params: Record<string, string>,
  principal: Principal | null,
  body: Promise<Buffer | undefined> | undefined,
): unknown {
  const { cluster } = server.options;
  if (cluster !== undefined) {
    // Served here or relayed; even here, the handler may find the lease ended meanwhile (a stalled
    // event loop outlived it), and then the user is looked up again as a relayed request would be.
    if (principal !== null) return runWhereOwned(x, route, params, principal, body, cluster);
    if (route.placeBy !== undefined) return runWherePlaced(x, route, params, route.placeBy, body, cluster);
  }
  // Fast path: nothing to wait for.
  if (body === undefined && route.rateLimiter === undefined) return run(x, route, params, principal, undefined);
  return runAfterBody(x, route, params, principal, body);
}

/**
 * The caller of a route that requires auth (a promise when the directory is read); throws or
 * rejects with 401, or 503 when the session store is busy.
 */
function authenticate(server: Server, x: Exchange): Principal | Promise<Principal> {
  let found: Principal | null | Promise<Principal | null>;
  try {
    found = authenticateHeader(x.headers.get('authorization'), server.options.authenticate);
  } catch (error) {
    throw unreadableSession(server, x, error);
  }
  if (found instanceof Promise) {
    return found.then(admitted, (error: unknown) => {
      throw unreadableSession(server, x, error);
    });
  }
  return admitted(found);
}

function admitted(principal: Principal | null): Principal {
  if (principal === null) throw new AppError('unauthorized', 'A valid bearer token is required', { headers: { 'WWW-Authenticate': 'Bearer' } });
  return principal;
}

/**
 * Reading the session failed: a storage failure a retry can cure is answered as such; anything
 * else is a bug, for `fail` to log and answer. Either way this request fails, never the process.
 */
function unreadableSession(server: Server, x: Exchange, error: unknown): unknown {
  if (!isRetryableStorageError(error)) return error;
  const cluster = clusterUnavailable(server.logger, error);
  if (cluster !== undefined) return cluster;
  server.logger.warn({ err: error, requestId: x.requestId, method: x.method, path: x.path }, 'could not check a token');
  return new AppError('service_unavailable', 'Storage is busy right now; retry later', { headers: { 'Retry-After': '5' } });
}

function authenticateHeader(header: string | undefined, authenticate: HttpOptions['authenticate']): Principal | null | Promise<Principal | null> {
  if (header === undefined) return null;
  const match = /^Bearer[ ]+([A-Za-z0-9._~+/=-]{1,512})[ ]*$/i.exec(header);
  return match ? authenticate(match[1] as string) : null;
}

/**
 * Starts reading the body: returns a promise of it (rejected with the route's "too large" answer
 * when it is), or undefined when there is nothing to wait for. A route that takes no body ignores
 * one, but a chunked one is read and discarded first (up to the drain bound), so that no answer is
 * given over a body of unknown length still on the wire (see `closesConnection`). Throws the
 * refusals decided before reading.
 */
function startBody(server: Server, x: Exchange, route: Route, raw: RawBodySpec | undefined): Promise<Buffer | undefined> | undefined {
  if (route.body === undefined) return x.body === 'unread' && x.declared === undefined ? readBody(x, 0) : undefined;
  if (x.body === 'none') return undefined;
  const maxBytes = raw === undefined ? server.options.maxJsonBodyBytes : raw.maxBytes;
  // Refused from its declared length: not one byte of it is kept.
  if (x.declared !== undefined && x.declared > maxBytes) throw tooLarge(raw, maxBytes);
  if (raw !== undefined) {
    // Decided before buffering: the declared length, or the route's maximum for a chunked body
    // whose length is known only at its end.
    x.reservation = server.uploadMemory.tryReserve(x.declared ?? maxBytes);
    if (x.reservation === undefined) {
      throw new AppError('service_unavailable', 'Too many uploads are in progress right now; retry shortly', {
        headers: { 'Retry-After': UPLOAD_RETRY_AFTER_SECONDS },
      });
    }
  }
  return readBody(x, maxBytes, { tooLarge: () => tooLarge(raw, maxBytes), onDiscard: x.reservation?.release });
}

function tooLarge(raw: RawBodySpec | undefined, maxBytes: number): AppError {
  return raw?.tooLarge?.() ?? new AppError('payload_too_large', `Request body exceeds ${maxBytes} bytes`);
}

interface ReadBodyOptions {
  /** Rejects with this when the body is longer than `keepBytes`; without it, resolves with undefined. */
  tooLarge?: () => AppError;
  /** Called when the kept bytes are dropped, i.e. when the body turns out longer than `keepBytes`. */
  onDiscard?: () => void;
}

/**
 * Collects the body, keeping at most `keepBytes` of it. A declared length gets one buffer of that
 * size up front, so each chunk is copied once (uWS reuses its memory) and never joined; a chunked
 * body keeps copies of its chunks. A body past `keepBytes` is dropped at once and only counted
 * from then on, until it ends (the connection stays usable) or passes the drain bound (the rest
 * stays unread, and the answer closes the connection): then the promise settles as `tooLarge`
 * says. It also rejects when the client goes away. Only ever called inside the uWS callback, as
 * uWS wants `onData` attached before it returns.
 */
function readBody(x: Exchange, keepBytes: number, options: ReadBodyOptions = {}): Promise<Buffer | undefined> {
  const { declared, drainLimit } = x;
  return new Promise((resolve, reject) => {
    let whole = declared !== undefined && declared <= keepBytes ? Buffer.allocUnsafe(declared) : undefined;
    const chunks: Buffer[] = [];
    let received = 0;
    let discarding = false;
    let settled = false;
    const stop = () => {
      settled = true;
      x.onAbort = undefined;
    };
    const discarded = (state: 'read' | 'abandoned') => {
      stop();
      x.body = state;
      if (options.tooLarge) reject(options.tooLarge());
      else resolve(undefined);
    };
    x.onAbort = () => {
      stop();
      reject(new AppError('invalid_input', 'Request aborted'));
    };
    x.res.onData((chunk, isLast) => {
      if (settled) return;
      const offset = received;
      received += chunk.byteLength;
      if (!discarding && (received > keepBytes || (whole !== undefined && received > whole.byteLength))) {
        discarding = true;
        whole = undefined;
        chunks.length = 0;
        options.onDiscard?.();
      }
      if (discarding) {
        if (received > drainLimit) discarded('abandoned');
        else if (isLast) discarded('read');
        return;
      }
      if (whole !== undefined) whole.set(new Uint8Array(chunk), offset);
      else chunks.push(Buffer.from(new Uint8Array(chunk)));
      if (isLast) {
        stop();
        x.body = 'read';
        resolve(whole ?? (chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks, received)));
      }
    });
  });
}

/** Waits for the body and the rate limiter, then runs the handler. */
async function runAfterBody(
  x: Exchange,
  route: Route,
  params: Record<string, string>,
  principal: Principal | null,
  pending: Promise<Buffer | undefined> | undefined,
): Promise<unknown> {
  // Only this frame holds the body's promise, and only until the handler is called: the handler
  // gets the bytes and holds them as long as it needs them, no longer.
  const rawBody = pending === undefined ? undefined : await pending;
  if (route.rateLimiter) await route.rateLimiter.consume(x.remoteAddress);
  if (x.aborted) return undefined;
  return run(x, route, params, principal, route.body === undefined ? undefined : rawBody);
}

/** Cluster mode: where a request's user is served, 'here' or the owner's node. */
type Location = 'here' | { node: string };
type Locate = () => 'here' | Promise<Location>;

/**
 * Cluster mode, a signed-in request: waits for the body and the rate limit as `runAfterBody`, then
 * for where the caller's user is served (looked up while the body arrives), and runs the handler
 * here or relays the request to the owner, whose answer is written as it came.
 */
async function runWhereOwned(
  x: Exchange,
  route: Route,
  params: Record<string, string>,
  principal: Principal,
  pending: Promise<Buffer | undefined> | undefined,
  cluster: NonNullable<HttpOptions['cluster']>,
): Promise<unknown> {
  const locate: Locate = () => cluster.placement.locate(principal.userId);
  const where = locate();
  // Awaited only once the body is in: a refusal meanwhile (Redis unreachable) must not go unheard
  // (an unhandled rejection), nor be lost when the body fails first.
  if (where instanceof Promise) where.catch(() => undefined);
  const rawBody = pending === undefined ? undefined : await pending;
  if (route.rateLimiter) await route.rateLimiter.consume(x.remoteAddress);
  const body = route.body === undefined ? undefined : rawBody;
  return serveWhereOwned(x, principal.userId, principal, body, await where, locate, () => run(x, route, params, principal, body), cluster);
}

/**
 * Cluster mode, a request without a session whose route names the user that must serve it
 * (`placeBy`: a login, a mailed token, a public avatar): waits for the body and the rate limit,
 * validates, asks the route, and runs the handler here (no user named, or this node owns them) or
 * relays the request to that user's owner. A user without a file is no one to relay to: served
 * here, where the handler answers as for an unknown user.
 */
async function runWherePlaced(
  x: Exchange,
  route: Route,
  params: Record<string, string>,
  placeBy: NonNullable<Route['placeBy']>,
  pending: Promise<Buffer | undefined> | undefined,
  cluster: NonNullable<HttpOptions['cluster']>,
): Promise<unknown> {
  const rawBody = pending === undefined ? undefined : await pending;
  if (route.rateLimiter) await route.rateLimiter.consume(x.remoteAddress);
  if (x.aborted) return undefined;
  const body = route.body === undefined ? undefined : rawBody;
  const ctx = contextOf(x, route, params, null, body);
  const userId = await placeBy(ctx);
  if (userId === undefined) return route.handler(ctx);
  const locate: Locate = async () => {
    try {
      return await cluster.placement.locate(userId);
    } catch (error) {
      if (error instanceof UserFileMissingError) return 'here';
      throw error;
    }
  };
  return serveWhereOwned(x, userId, null, body, await locate(), locate, () => route.handler(ctx), cluster);
}

/**
 * Serves a request where `userId` is served: runs it here (`runHere`) or relays it to the owner.
 * A user that moved meanwhile (the owner says it is not theirs any more, or this node's own lease
 * ended while it served) is looked up again, twice at most.
 */
async function serveWhereOwned(
  x: Exchange,
  userId: string,
  principal: Principal | null,
  body: Buffer | undefined,
  first: Location,
  locate: Locate,
  runHere: () => unknown,
  cluster: NonNullable<HttpOptions['cluster']>,
): Promise<unknown> {
  let location = first;
  for (let misdirected = 0; ; misdirected += 1) {
    if (x.aborted) return undefined;
    if (location === 'here') {
      try {
        return await runHere();
      } catch (error) {
        // The user's file took nothing (the fencing check refused the commit, or the document was
        // never loaded), and a handler's other steps (the directory's) may run again: it is run
        // again where the user is served now.
        if (!(error instanceof NotOwnerError) || misdirected >= MAX_MISDIRECTED) throw error;
        location = await locate();
        continue;
      }
    }
    const request: ForwardedRequest = {
      method: x.method,
      path: x.path,
      rawQuery: x.rawQuery,
      headers: [...x.headers],
      remoteAddress: x.remoteAddress,
      requestId: x.requestId,
      userId,
      principal,
    };
    const { answer, body: payload } = await cluster.forward(location.node, request, body);
    if (answer.misdirected !== true) return new Reply(answer.status, payload.byteLength > 0 ? new RawBytes(payload) : undefined, answer.headers);
    if (misdirected >= MAX_MISDIRECTED) {
      throw new AppError('service_unavailable', 'Your data is moving between servers right now; retry shortly', { headers: { 'Retry-After': '1' } });
    }
    location = await locate();
  }
}

/**
 * Cluster mode, on the node that owns the request's user: serves a request another node read (and
 * authenticated, and placed here by its route), its rate limit counted there, and returns the
 * answer for that node to write. Never throws: every failure is an answer, as `fail` would have
 * written it.
 */
async function serveForwarded(server: Server, request: ForwardedRequest, body: Uint8Array | undefined): Promise<RelayedAnswer> {
  const info: RequestInfo = {
    method: request.method,
    path: request.path,
    rawQuery: request.rawQuery,
    headers: new Map(request.headers),
    remoteAddress: request.remoteAddress,
    requestId: request.requestId,
  };
  if (server.options.cluster?.placement.servesHere(request.userId) !== true)
    return { answer: { status: 0, headers: {}, misdirected: true }, body: new Uint8Array(0) };
  try {
    const match = server.router.match(info.method, info.path);
    if (match.kind !== 'found') throw new AppError('not_found', `No route for ${info.method} ${info.path}`);
    // Only ever sent with its session by a node; should one come without, it is refused as any.
    if (match.route.auth === 'required' && request.principal === null) admitted(null);
    const result = await run(
      info,
      match.route,
      match.params,
      request.principal,
      body === undefined ? undefined : Buffer.from(body.buffer, body.byteOffset, body.byteLength),
    );
    const { status, headers, payload } = encodeResult(result);
    return { answer: { status, headers }, body: payload === undefined ? new Uint8Array(0) : typeof payload === 'string' ? Buffer.from(payload) : payload };
  } catch (error) {
    const answer = toAppError(server, info, error, false);
    return { answer: { status: answer.status, headers: { ...JSON_HEADERS, ...answer.headers } }, body: Buffer.from(JSON.stringify(answer.toBody())) };
  }
}

/** Validates the inputs and calls the handler; synchronous up to whatever the handler returns. */
function run(x: RequestInfo, route: Route, rawParams: Record<string, string>, principal: Principal | null, rawBody: Buffer | undefined): unknown {
  return route.handler(contextOf(x, route, rawParams, principal, rawBody));
}

/** The handler's context: the inputs validated (a refusal is thrown), the rest copied from the request. */
function contextOf<P extends Principal | null>(
  x: RequestInfo,
  route: Route,
  rawParams: Record<string, string>,
  principal: P,
  rawBody: Buffer | undefined,
): RequestContext<unknown, unknown, unknown, P> {
  let body: unknown;
  if (isRawBodySpec(route.body)) {
    body = rawBody ?? EMPTY_BODY;
  } else if (route.body !== undefined) {
    const raw = rawBody ?? EMPTY_BODY;
    // A body is read as JSON only when the client says it is: a form or text/plain post (what
    // a browser sends cross-origin without a preflight) is never parsed into an action.
    if (raw.byteLength > 0 && !isJsonMediaType(x.headers.get('content-type'))) {
      throw new AppError('unsupported_media_type', 'Send the body as JSON with the header Content-Type: application/json');
    }
    body = validate(route, route.body, parseJson(raw), 'body');
  }
  const query = route.query ? validate(route, route.query, parseQuery(x.rawQuery), 'query') : parseQuery(x.rawQuery);
  // Last, where handlers used to check them: which answer wins when several inputs are wrong stays.
  const params = route.params ? validate(route, route.params, rawParams, 'params') : rawParams;
  return {
    method: x.method as Method,
    path: x.path,
    params,
    query,
    body,
    principal,
    headers: x.headers,
    remoteAddress: x.remoteAddress,
    requestId: x.requestId,
  };
}

/** Answers a handler's result; one that cannot be serialised takes the error path instead. */
function respond(server: Server, x: Exchange, result: unknown): void {
  let encoded: ReturnType<typeof encodeResult>;
  try {
    encoded = encodeResult(result);
  } catch (error) {
    fail(server, x, error);
    return;
  }
  send(server, x, encoded.status, encoded.headers, encoded.payload);
}

/** A handler's result as its status, headers and payload; throws when it cannot be serialised. */
function encodeResult(result: unknown): { status: number; headers: Record<string, string>; payload: string | Uint8Array | undefined } {
  if (result instanceof Reply) {
    if (result.body instanceof RawBytes) return { status: result.status, headers: { ...BASE_HEADERS, ...result.headers }, payload: result.body.bytes };
    if (result.body === undefined) return { status: result.status, headers: { ...BASE_HEADERS, ...result.headers }, payload: undefined };
    return { status: result.status, headers: { ...JSON_HEADERS, ...result.headers }, payload: JSON.stringify(result.body) };
  }
  if (result === undefined) return { status: 204, headers: BASE_HEADERS, payload: undefined };
  return { status: 200, headers: JSON_HEADERS, payload: JSON.stringify(result) };
}

/**
 * The one error path. Maps what was thrown to its answer: an AppError as it is; a storage failure
 * a retry can cure (full disk, no descriptor or user-file slot left) to 503 with Retry-After;
 * anything else is a bug, logged with the request id and answered 500. A refusal made before its
 * chunked body was read waits for that body to end first (up to the drain bound), so a client
 * still sending it can read the answer.
 */
function fail(server: Server, x: Exchange, error: unknown): void {
  const answer = toAppError(server, x, error, x.done);
  if (x.done) return;
  const body = JSON.stringify(answer.toBody());
  const headers = { ...JSON_HEADERS, ...answer.headers };
  if (x.body === 'unread' && x.declared === undefined && !x.aborted && !server.refusing && !x.untrustedFraming) {
    const answerNow = () => send(server, x, answer.status, headers, body);
    readBody(x, 0).then(answerNow, answerNow);
    return;
  }
  send(server, x, answer.status, headers, body);
}

function toAppError(server: Server, x: RequestInfo, error: unknown, answered: boolean): AppError {
  if (error instanceof AppError) return error;
  // A write that met an account deleted meanwhile by an admin command (the file refuses it): the
  // account is gone, which is what a read would have said.
  if (error instanceof UserFileMissingError) return new AppError('user_not_found', 'No user with that id');
  const context = { err: error, requestId: x.requestId, method: x.method, path: x.path };
  if (isRetryableStorageError(error)) {
    const cluster = clusterUnavailable(server.logger, error);
    if (cluster !== undefined) return cluster;
    server.logger.warn(context, 'storage failure answered with 503');
    return new AppError('service_unavailable', 'Storage is full or busy right now; nothing was changed; retry later', { headers: { 'Retry-After': '5' } });
  }
  server.logger.error(context, answered ? 'unhandled error after the request was answered' : 'unhandled error while serving a request');
  return new AppError('internal_error', `Something went wrong on our side (request ${x.requestId})`);
}

/**
 * The one rule for ending the connection with an answer. It ends when the server is shutting down
 * (a graceful FIN after the bytes, so closing the remaining sockets later cannot cut an answer
 * short), when the framing cannot be trusted, and when body bytes may be left on the wire that
 * nobody will read: a body abandoned past its drain bound, a declared one left unread that is
 * larger than the bound, a chunked one left unread (its length is unknown). A declared remainder
 * within the bound is discarded by uWS, and the connection serves the next request.
 */
function closesConnection(server: Server, x: Exchange): boolean {
  if (server.refusing || x.untrustedFraming) return true;
  switch (x.body) {
    case 'none':
    case 'read':
      return false;
    case 'abandoned':
      return true;
    case 'unread':
      return x.declared === undefined || x.declared > x.drainLimit;
  }
}

/**
 * Ends the request, exactly once: writes its answer unless the client has gone, then gives back
 * its upload reservation and its place in `inflight`.
 */
function send(server: Server, x: Exchange, status: number, headers: Record<string, string>, payload: string | Uint8Array | undefined): void {
  if (x.done) return;
  x.done = true;
  try {
    if (!x.aborted) write(server, x, status, headers, payload);
  } finally {
    x.reservation?.release();
    server.inflight.end();
    if (server.metrics !== undefined) {
      const recorder = x.recorder ?? server.metrics.http.unmatched(x.method);
      recorder.record(x.aborted ? CLIENT_CLOSED_REQUEST : status, (performance.now() - x.started) / 1000);
    }
  }
}

/** Writes the answer, corked (it may come after an await); a write uWS refuses half-way drops the connection. */
function write(server: Server, x: Exchange, status: number, headers: Record<string, string>, payload: string | Uint8Array | undefined): void {
  const close = closesConnection(server, x);
  const { res } = x;
  let ended = false;
  try {
    res.cork(() => {
      res.writeStatus(`${status} ${STATUS_CODES[status] ?? ''}`);
      res.writeHeader('X-Request-Id', x.requestId);
      for (const key in headers) res.writeHeader(key, headers[key] as string);
      if (payload === undefined) res.endWithoutBody(0, close);
      else res.end(payload, close);
      ended = true;
    });
  } catch (error) {
    // A write refused half-way (e.g. a header value uWS rejects) leaves a partial answer on the
    // wire: no second answer can follow it, so the connection is dropped instead.
    server.logger.error({ err: error, requestId: x.requestId, method: x.method, path: x.path, status }, 'could not write the response');
    if (!ended && !x.aborted) res.close();
    return;
  }
  if (server.logger.isLevelEnabled('debug')) {
    server.logger.debug({ requestId: x.requestId, method: x.method, path: x.path, status, ms: Math.round(performance.now() - x.started) }, 'request');
  }
}
