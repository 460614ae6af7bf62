import { STATUS_CODES } from 'node:http';
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { RateLimiterRes } from 'rate-limiter-flexible';
import type { z } from 'zod';
import type { FieldError } from '../../shared/errors.ts';
import type { HttpRequest, HttpResponse, TemplatedApp } from './uws.ts';
import { AppError } from './app-error.ts';
import { InflightTracker } from './inflight.ts';
import { RawBytes, Reply, isRawBodySpec, type Method, type Principal, type Route } from './route.ts';
import { Router } from './router.ts';

export interface HttpOptions {
  logger: Logger;
  maxJsonBodyBytes: number;
  /** Synchronous on purpose: a bad token is refused before any body byte is buffered. */
  authenticate: (token: string) => Principal | null;
}

interface RequestState {
  aborted: boolean;
  responded: boolean;
  onAbort: (() => void) | undefined;
}

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
  const bootId = randomBytes(3).toString('hex');
  let requestCounter = 0;
  let refusing = false;
  const { logger } = options;

  app.any('/*', (res: HttpResponse, req: HttpRequest) => {
    const state: RequestState = { aborted: false, responded: false, onAbort: undefined };
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
    const requestId = `${bootId}-${(requestCounter += 1).toString(36)}`;
    const started = performance.now();

    const finish = (status: number, extra: Record<string, string>, payload: string | Uint8Array | undefined, close = false) => {
      if (state.aborted || state.responded) return;
      state.responded = true;
      // While shutting down, each answer ends its connection gracefully (FIN after the bytes), so
      // closing the remaining sockets afterwards cannot cut a response short.
      if (refusing) close = true;
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

    if (contentLengthCount > 1) {
      // uWS frames the body by the first value; a proxy in front may have used another, and then
      // what it sent as body would be read here as a request of its own (request smuggling).
      // Answering now would not stop uWS from serving a request that follows in the same packet
      // (its close flag is reset by the next request), so the answer waits for the next turn of
      // the loop: by then uWS has closed the connection itself if such a request came, because
      // this one is still pending. Either way nothing after these headers is ever served.
      setImmediate(() => fail(new AppError('bad_request', 'A request must not have more than one Content-Length header'), true));
      return;
    }
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
      fail(new AppError('not_found', `No route for ${method} ${path}`));
      return;
    }
    if (match.kind === 'method_not_allowed') {
      fail(new AppError('method_not_allowed', `${method} is not allowed here`, { headers: { Allow: match.allowed.join(', ') } }));
      return;
    }
    const { route, params } = match;

    let principal: Principal | null = null;
    if (route.auth === 'required') {
      principal = authenticateHeader(headers.get('authorization'), options.authenticate);
      if (principal === null) {
        const hasBody = (headers.get('content-length') ?? '0') !== '0' || headers.has('transfer-encoding');
        fail(new AppError('unauthorized', 'A valid bearer token is required', { headers: { 'WWW-Authenticate': 'Bearer' } }), hasBody);
        return;
      }
    }

    let bodyPromise: Promise<Buffer> | undefined;
    if (route.body !== undefined) {
      const spec = isRawBodySpec(route.body) ? route.body : undefined;
      const maxBytes = spec ? spec.maxBytes : options.maxJsonBodyBytes;
      const tooLarge = spec?.tooLarge?.() ?? new AppError('payload_too_large', `Request body exceeds ${maxBytes} bytes`);
      const declared = Number(headers.get('content-length') ?? '0');
      if (declared > maxBytes) {
        fail(tooLarge, true);
        return;
      }
      bodyPromise = readBody(res, state, maxBytes, tooLarge);
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
        // A body we stopped reading must not be parsed as the next request: close instead.
        fail(error, error.code === 'payload_too_large' || error.code === 'file_too_large');
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
      const rawBody = bodyPromise ? await bodyPromise : undefined;
      if (route.rateLimiter) await consumeRateLimit(route.rateLimiter, remoteAddress);
      if (state.aborted) return undefined;
      return run(rawBody);
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
      void outcome
        .then(respond)
        .catch(onError)
        .finally(() => inflight.end());
    } else {
      inflight.end();
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

/** Collects the body, copying each chunk (uWS reuses its memory), and stops at `maxBytes`. */
function readBody(res: HttpResponse, state: RequestState, maxBytes: number, tooLarge: AppError): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let received = 0;
    let over = false;
    state.onAbort = () => reject(new AppError('invalid_input', 'Request aborted'));
    res.onData((chunk, isLast) => {
      if (over) return;
      received += chunk.byteLength;
      if (received > maxBytes) {
        over = true;
        chunks.length = 0;
        reject(tooLarge);
        return;
      }
      chunks.push(Buffer.from(new Uint8Array(chunk)));
      if (isLast) resolve(chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks, received));
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
  let result;
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
