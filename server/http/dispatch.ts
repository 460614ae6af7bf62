import { STATUS_CODES } from 'node:http';
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { RateLimiterRes } from 'rate-limiter-flexible';
import type { z } from 'zod';
import type { FieldError } from '../../shared/errors.ts';
import type { HttpRequest, HttpResponse, TemplatedApp } from './uws.ts';
import { AppError } from '../core/app-error.ts';
import { InflightTracker } from './inflight.ts';
import { MemoryBudget, type Reservation } from './memory-budget.ts';
import { isRetryableStorageError } from '../storage/errors.ts';
import type { Principal } from '../core/principal.ts';
import { RawBytes, Reply, isRawBodySpec, type Method, type Route } from './route.ts';
import { Router } from './router.ts';

export interface HttpOptions {
  logger: Logger;
  maxJsonBodyBytes: number;
  /** Bytes of raw (upload) bodies buffered at once, over all requests; past it uploads get 503. */
  maxUploadMemoryBytes: number;
  /** Synchronous on purpose: a bad token is refused before any body byte is buffered. */
  authenticate: (token: string) => Principal | null;
}

interface RequestState {
  aborted: boolean;
  responded: boolean;
  /** Set when body bytes are left unread: the answer must then end the connection. */
  closeConnection: boolean;
  onAbort: (() => void) | undefined;
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

const utf8 = new TextDecoder('utf-8', { fatal: true });
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
export function mountRoutes(app: TemplatedApp, routes: Route[], options: HttpOptions): { inflight: InflightTracker; refuseNew(): void } {
  const router = new Router();
  for (const r of routes) router.add(r);
  const inflight = new InflightTracker();
  const uploadMemory = new MemoryBudget(options.maxUploadMemoryBytes);
  const defaultDrainLimit = drainLimitFor(options.maxJsonBodyBytes);
  const bootId = randomBytes(3).toString('hex');
  let requestCounter = 0;
  let refusing = false;
  const { logger } = options;

  app.any('/*', (res: HttpResponse, req: HttpRequest) => {
    const state: RequestState = { aborted: false, responded: false, closeConnection: false, onAbort: undefined };
    res.onAborted(() => {
      state.aborted = true;
      state.onAbort?.();
    });
    // Everything needed from `req` is copied now: it is invalid after this function returns.
    const method = req.getCaseSensitiveMethod();
    const path = req.getUrl();
    const rawQuery = req.getQuery() ?? '';
    const headers = new Map<string, string>();
    let contentLengthCount = 0;
    req.forEach((key, value) => {
      if (key === 'content-length') contentLengthCount += 1;
      headers.set(key, value);
    });
    const remoteAddress = addressDecoder.decode(res.getRemoteAddressAsText());
    requestCounter += 1;
    const requestId = `${bootId}-${requestCounter.toString(36)}`;
    const started = performance.now();

    const finish = (status: number, extra: Record<string, string>, payload: string | Uint8Array | undefined, close = false) => {
      if (state.aborted || state.responded) return;
      state.responded = true;
      // While shutting down, each answer ends its connection gracefully (FIN after the bytes), so
      // closing the remaining sockets afterwards cannot cut a response short.
      if (refusing || state.closeConnection) close = true;
      let ended = false;
      try {
        res.cork(() => {
          res.writeStatus(`${status} ${STATUS_CODES[status] ?? ''}`);
          res.writeHeader('X-Request-Id', requestId);
          for (const [key, value] of Object.entries(extra)) res.writeHeader(key, value);
          if (payload === undefined) res.endWithoutBody(0, close);
          else res.end(payload, close);
          ended = true;
        });
      } catch (error) {
        // A write refused half-way (e.g. a header value uWS rejects) leaves a partial answer on the
        // wire: no second answer can follow it, so the connection is dropped instead.
        logger.error({ err: error, requestId, method, path, status }, 'could not write the response');
        if (!ended && !state.aborted) res.close();
        return;
      }
      logger.debug({ requestId, method, path, status, ms: Math.round(performance.now() - started) }, 'request');
    };
    const fail = (error: AppError, close = false) => {
      finish(error.status, { ...JSON_HEADERS, ...error.headers }, JSON.stringify(error.toBody()), close);
    };

    const lengthHeader = headers.get('content-length');
    if (contentLengthCount > 1 || (lengthHeader !== undefined && !/^[0-9]+$/.test(lengthHeader))) {
      // uWS frames the body by the first value; a proxy in front may have used another, and then
      // what it sent as body would be read here as a request of its own (request smuggling).
      // Answering now would not stop uWS from serving a request that follows in the same packet
      // (its close flag is reset by the next request), so the answer waits for the next turn of
      // the loop: by then uWS has closed the connection itself if such a request came, because
      // this one is still pending. Either way nothing after these headers is ever served.
      const message = contentLengthCount > 1 ? 'A request must not have more than one Content-Length header' : 'Content-Length must be a number of bytes';
      setImmediate(() => fail(new AppError('bad_request', message), true));
      return;
    }
    /** The body's length when declared; undefined when chunked (or absent). */
    const declared = lengthHeader === undefined ? undefined : Number(lengthHeader);
    const hasBody = (declared ?? 0) > 0 || headers.has('transfer-encoding');

    /**
     * Answers `error` to a request whose body has not been read, without cutting off a client that
     * is still sending it (see MIN_DRAIN_BYTES): a declared remainder is discarded by uWS itself
     * after the answer; a chunked one is read and discarded here first, as it has no known end.
     * A body past `drainLimit` is not waited for: the answer closes the connection.
     */
    const refuseUnread = (error: AppError, drainLimit: number) => {
      if (!hasBody) {
        fail(error);
      } else if (declared !== undefined) {
        fail(error, declared > drainLimit);
      } else {
        inflight.begin();
        // Either way the answer is `error`: after the body ended, after it passed drainLimit (the
        // reader then marked the connection for closing), or never, should the client go away.
        void readBody(res, state, { declared, keepBytes: 0, drainLimit, tooLarge: error })
          .then(
            () => fail(error),
            () => fail(error),
          )
          .finally(() => inflight.end());
      }
    };
    if (refusing) {
      fail(new AppError('service_unavailable', 'The server is shutting down'), true);
      return;
    }
    if (method === 'OPTIONS') {
      finish(204, CORS_PREFLIGHT, undefined);
      return;
    }
    const match = router.match(method, path);
    if (match.kind === 'not_found') {
      refuseUnread(new AppError('not_found', `No route for ${method} ${path}`), defaultDrainLimit);
      return;
    }
    if (match.kind === 'method_not_allowed') {
      const allow = match.allowed.join(', ');
      refuseUnread(new AppError('method_not_allowed', `${method} is not allowed here`, { headers: { Allow: allow } }), defaultDrainLimit);
      return;
    }
    const { route, params } = match;
    const spec = isRawBodySpec(route.body) ? route.body : undefined;
    const maxBytes = spec ? spec.maxBytes : options.maxJsonBodyBytes;
    const drainLimit = route.body === undefined ? defaultDrainLimit : drainLimitFor(maxBytes);

    let principal: Principal | null = null;
    if (route.auth === 'required') {
      try {
        principal = authenticateHeader(headers.get('authorization'), options.authenticate);
      } catch (error) {
        // Reading the session failed (storage): this request fails, never the process.
        const retryable = isRetryableStorageError(error);
        logger[retryable ? 'warn' : 'error']({ err: error, requestId, method, path }, 'could not check a token');
        refuseUnread(
          retryable
            ? new AppError('service_unavailable', 'Storage is busy right now; retry later', { headers: { 'Retry-After': '5' } })
            : new AppError('internal_error', `Something went wrong on our side (request ${requestId})`),
          drainLimit,
        );
        return;
      }
      if (principal === null) {
        refuseUnread(new AppError('unauthorized', 'A valid bearer token is required', { headers: { 'WWW-Authenticate': 'Bearer' } }), drainLimit);
        return;
      }
    }

    let bodyPromise: Promise<Buffer> | undefined;
    let reservation: Reservation | undefined;
    if (route.body !== undefined) {
      const tooLarge = spec?.tooLarge?.() ?? new AppError('payload_too_large', `Request body exceeds ${maxBytes} bytes`);
      if (declared !== undefined && declared > maxBytes) {
        // Refused from its declared length: not one byte of it is kept.
        refuseUnread(tooLarge, drainLimit);
        return;
      }
      if (spec !== undefined && hasBody) {
        // Decided before buffering: the declared length, or the route's maximum for a chunked body
        // whose length is known only at its end.
        reservation = uploadMemory.tryReserve(declared ?? maxBytes);
        if (reservation === undefined) {
          const busy = new AppError('service_unavailable', 'Too many uploads are in progress right now; retry shortly', {
            headers: { 'Retry-After': UPLOAD_RETRY_AFTER_SECONDS },
          });
          refuseUnread(busy, drainLimit);
          return;
        }
      }
      bodyPromise = readBody(res, state, { declared, keepBytes: maxBytes, drainLimit, tooLarge, onDiscard: reservation?.release });
    }

    const respond = (result: unknown) => {
      if (result instanceof Reply) {
        if (result.body instanceof RawBytes) finish(result.status, { ...BASE_HEADERS, ...result.headers }, result.body.bytes);
        else if (result.body === undefined) finish(result.status, { ...BASE_HEADERS, ...result.headers }, undefined);
        else finish(result.status, { ...JSON_HEADERS, ...result.headers }, JSON.stringify(result.body));
      } else if (result === undefined) {
        finish(204, BASE_HEADERS, undefined);
      } else {
        finish(200, JSON_HEADERS, JSON.stringify(result));
      }
    };
    const onError = (error: unknown) => {
      if (error instanceof AppError) {
        fail(error);
      } else if (isRetryableStorageError(error)) {
        // A full disk, no descriptor or user-file slot left: waiting helps, so say when to retry.
        logger.warn({ err: error, requestId, method, path }, 'storage failure answered with 503');
        fail(new AppError('service_unavailable', 'Storage is full or busy right now; nothing was changed; retry later', { headers: { 'Retry-After': '5' } }));
      } else {
        logger.error({ err: error, requestId, method, path }, 'unhandled error while serving a request');
        fail(new AppError('internal_error', `Something went wrong on our side (request ${requestId})`));
      }
    };
    /** Validates and calls the handler; synchronous up to whatever the handler returns. */
    const run = (rawBody: Buffer | undefined): unknown => {
      let body: unknown = rawBody;
      if (route.body !== undefined && !isRawBodySpec(route.body)) {
        const raw = rawBody ?? Buffer.alloc(0);
        // A body is read as JSON only when the client says it is: a form or text/plain post (what
        // a browser sends cross-origin without a preflight) is never parsed into an action.
        if (raw.byteLength > 0 && !isJsonMediaType(headers.get('content-type'))) {
          throw new AppError('unsupported_media_type', 'Send the body as JSON with the header Content-Type: application/json');
        }
        body = validate(route, route.body, parseJson(raw), 'body');
      }
      const query = route.query ? validate(route, route.query, parseQuery(rawQuery), 'query') : parseQuery(rawQuery);
      return route.handler({ method: method as Method, path, params, query, body, principal, headers, remoteAddress, requestId });
    };

    /** Waits for the body and the rate limiter, then runs the handler. */
    const runAfterBody = async (): Promise<unknown> => {
      const pending = bodyPromise;
      // The settled promise would keep the body alive for as long as this request's closures
      // live; the handler gets it, and holds it only as long as it needs it.
      bodyPromise = undefined;
      const rawBody = pending ? await pending : undefined;
      if (route.rateLimiter) await consumeRateLimit(route.rateLimiter, remoteAddress);
      if (state.aborted) return undefined;
      return run(rawBody);
    };

    /** Runs once per request, however it ended (answered, failed or aborted). */
    const end = () => {
      reservation?.release();
      inflight.end();
    };

    // One error path for both ways a request completes: whatever throws (validation, the handler,
    // or serialising its result in `respond`) ends in onError, and the request ends exactly once.
    inflight.begin();
    let outcome: unknown;
    try {
      // Fast path: nothing to wait for, so a synchronous handler answers inside this uWS callback,
      // without a promise or a microtask per request.
      outcome = bodyPromise === undefined && route.rateLimiter === undefined ? run(undefined) : runAfterBody();
      if (!(outcome instanceof Promise)) respond(outcome);
    } catch (error) {
      onError(error);
    }
    if (outcome instanceof Promise) {
      void outcome.then(respond).catch(onError).finally(end);
    } else {
      end();
    }
  });

  return {
    inflight,
    refuseNew() {
      refusing = true;
    },
  };
}

function authenticateHeader(header: string | undefined, authenticate: HttpOptions['authenticate']): Principal | null {
  if (header === undefined) return null;
  const match = /^Bearer[ ]+([A-Za-z0-9._~+/=-]{1,512})[ ]*$/i.exec(header);
  return match ? authenticate(match[1] as string) : null;
}

interface ReadBodyOptions {
  /** The declared Content-Length, if any (uWS delivers exactly that many bytes). */
  declared: number | undefined;
  /** Bytes kept at most; past them the body is too large. */
  keepBytes: number;
  /** Bytes read in all (kept or discarded) before giving up on the body and closing. */
  drainLimit: number;
  tooLarge: AppError;
  /** Called when the kept bytes are dropped, i.e. when the body turns out too large. */
  onDiscard?: () => void;
}

/**
 * Collects the body. A declared length gets one buffer of that size up front, so each chunk is
 * copied once (uWS reuses its memory) and never joined; a chunked body keeps copies of its chunks.
 * A body past `keepBytes` is dropped at once and only counted from then on: the promise rejects
 * with `tooLarge` when the body has ended (the connection stays usable) or passes `drainLimit`
 * (then the answer must close the connection, with the rest of the body unread).
 */
function readBody(res: HttpResponse, state: RequestState, options: ReadBodyOptions): Promise<Buffer> {
  const { declared, keepBytes, drainLimit, tooLarge } = options;
  return new Promise((resolve, reject) => {
    let whole = declared !== undefined && declared <= keepBytes ? Buffer.allocUnsafe(declared) : undefined;
    const chunks: Buffer[] = [];
    let received = 0;
    let discarding = false;
    let settled = false;
    const settle = (error: AppError | undefined, body?: Buffer) => {
      settled = true;
      state.onAbort = undefined;
      if (error) reject(error);
      else resolve(body as Buffer);
    };
    state.onAbort = () => settle(new AppError('invalid_input', 'Request aborted'));
    res.onData((chunk, isLast) => {
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
        if (received > drainLimit) {
          state.closeConnection = true;
          settle(tooLarge);
        } else if (isLast) {
          settle(tooLarge);
        }
        return;
      }
      if (whole !== undefined) whole.set(new Uint8Array(chunk), offset);
      else chunks.push(Buffer.from(new Uint8Array(chunk)));
      if (isLast) settle(undefined, whole ?? (chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks, received)));
    });
  });
}

/** `application/json`, any case, with or without parameters such as `; charset=utf-8`. */
function isJsonMediaType(contentType: string | undefined): boolean {
  if (contentType === undefined) return false;
  const semicolon = contentType.indexOf(';');
  return (semicolon === -1 ? contentType : contentType.slice(0, semicolon)).trim().toLowerCase() === 'application/json';
}

function parseJson(raw: Buffer): unknown {
  if (raw.byteLength === 0) return {};
  let text: string;
  try {
    text = utf8.decode(raw);
  } catch {
    throw new AppError('invalid_json', 'Request body is not valid UTF-8');
  }
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new AppError('invalid_json', error instanceof Error ? error.message : 'Request body is not valid JSON');
  }
}

/** First value per key; repeated keys do not turn into arrays a schema would not expect. */
function parseQuery(raw: string): Record<string, string> {
  const out: Record<string, string> = {};
  if (raw === '') return out;
  for (const [key, value] of new URLSearchParams(raw)) if (!Object.hasOwn(out, key)) out[key] = value;
  return out;
}

function validate(route: Route, schema: z.ZodType, value: unknown, source: 'body' | 'query'): unknown {
  let result: ReturnType<z.ZodType['safeParse']>;
  try {
    result = schema.safeParse(value);
  } catch {
    // Recursive schemas can exhaust the stack on absurdly nested input: that is bad input, not a bug.
    throw new AppError('invalid_input', 'Validation failed: the input is nested too deeply');
  }
  if (result.success) return result.data;
  throw (
    route.invalid?.(result.error.issues, source) ??
    new AppError('invalid_input', 'Validation failed', { errors: result.error.issues.flatMap((issue) => fieldErrors(issue, source)) })
  );
}

function fieldErrors(issue: z.core.$ZodIssue, source: 'body' | 'query'): FieldError[] {
  const base = issue.path.map(String).join('.');
  // An unknown key is reported at the key itself, so clients can point at the offending field.
  if (issue.code === 'unrecognized_keys') {
    return issue.keys.map((key) => ({ path: base ? `${base}.${key}` : key, message: 'Unknown field' }));
  }
  return [{ path: base || source, message: issue.message }];
}

async function consumeRateLimit(limiter: NonNullable<Route['rateLimiter']>, key: string): Promise<void> {
  try {
    await limiter.consume(key);
  } catch (error) {
    if (error instanceof RateLimiterRes) {
      const seconds = Math.max(1, Math.ceil(error.msBeforeNext / 1000));
      throw new AppError('too_many_requests', `Too many attempts; retry in ${seconds} s`, { headers: { 'Retry-After': String(seconds) } });
    }
    throw error;
  }
}
