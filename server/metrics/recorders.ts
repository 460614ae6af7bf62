/**
 * What the hot paths record, kept as plain numbers: an observation allocates nothing and costs a few
 * comparisons. prom-client's own `observe`/`inc` build and hash a label object on every call (about
 * 1 µs per request for a counter and a histogram, measured), which is 5 % of a REST request; here
 * that work happens once per scrape instead (`exposition.ts` reads these when Prometheus asks).
 * Nothing in this file knows about prom-client, HTTP or storage.
 */

/** A histogram's state: a count per bucket, their sum and how many there were. */
export class Buckets {
  /** Upper bounds (inclusive), ascending, in the unit observed (seconds). */
  readonly bounds: Float64Array;
  /** `counts[i]`: observations in (bounds[i-1], bounds[i]]; the last one holds those above every bound. */
  readonly counts: Float64Array;
  sum = 0;
  count = 0;

  constructor(bounds: readonly number[]) {
    this.bounds = Float64Array.from(bounds);
    this.counts = new Float64Array(bounds.length + 1);
  }

  observe(value: number): void {
    const { bounds, counts } = this;
    let index = 0;
    // Typed-array reads past the end are undefined, never reached here: index < length is checked first.
    while (index < bounds.length && value > (bounds[index] as number)) index += 1;
    counts[index] = (counts[index] as number) + 1;
    this.sum += value;
    this.count += 1;
  }
}

/**
 * Bounds of the request-duration histogram, in seconds. REST answers take well under a millisecond
 * when the server is idle and a few under load; uploads and Argon2 (register, login) take longer.
 */
export const HTTP_SECONDS_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** The route label of requests no route answered (see `HttpMetrics.unmatched`). */
const UNMATCHED_ROUTE = 'unmatched';

/** The status label of a request whose client went away before its answer (nginx's convention). */
export const CLIENT_CLOSED_REQUEST = 499;

/** Methods an unmatched request is labelled with; anything else is `OTHER`, so clients cannot add label values. */
const KNOWN_METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'];

/** The requests of one route (method and path pattern): how many per status, and how long they took. */
export class RouteRequests {
  readonly seconds = new Buckets(HTTP_SECONDS_BUCKETS);
  /** Requests by status code. */
  readonly statuses = new Map<number, number>();

  constructor(
    readonly method: string,
    /** The route's path pattern (`/users/:user_id`), never the URL: the label's values stay as few as the routes. */
    readonly route: string,
  ) {}

  record(status: number, seconds: number): void {
    this.statuses.set(status, (this.statuses.get(status) ?? 0) + 1);
    this.seconds.observe(seconds);
  }
}

/** Every route's requests; the HTTP edge gets each route's recorder once, when it mounts the routes. */
export class HttpMetrics {
  private readonly routes = new Map<string, RouteRequests>();
  private readonly unmatchedByMethod = new Map<string, RouteRequests>();

  forRoute(method: string, path: string): RouteRequests {
    const key = `${method} ${path}`;
    let recorder = this.routes.get(key);
    if (recorder === undefined) {
      recorder = new RouteRequests(method, path);
      this.routes.set(key, recorder);
    }
    return recorder;
  }

  /**
   * Requests no route answered: no such path (404) or method (405), CORS preflights, framing refused
   * (400), refused while shutting down (503). One recorder per known method, so the labels stay bounded.
   */
  unmatched(method: string): RouteRequests {
    let recorder = this.unmatchedByMethod.get(method);
    if (recorder === undefined) {
      const label = KNOWN_METHODS.includes(method) ? method : 'OTHER';
      recorder = this.unmatchedByMethod.get(label);
      if (recorder === undefined) {
        recorder = new RouteRequests(label, UNMATCHED_ROUTE);
        this.unmatchedByMethod.set(label, recorder);
      }
      // Only known methods are remembered under their own name: a client inventing methods adds nothing.
      if (label === method) this.unmatchedByMethod.set(method, recorder);
    }
    return recorder;
  }

  /** Every recorder that has seen a request. */
  *recorders(): Iterable<RouteRequests> {
    for (const recorder of this.routes.values()) if (recorder.seconds.count > 0) yield recorder;
    for (const [method, recorder] of this.unmatchedByMethod) if (recorder.method === method && recorder.seconds.count > 0) yield recorder;
  }
}

/**
 * Bounds of the commit-duration histogram, in seconds: one SQLite transaction appending a batch of
 * updates to the log (tens of microseconds on a quiet disk; more when the WAL checkpoints or the disk is busy).
 */
export const COMMIT_SECONDS_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1];

/** What the loaded documents do: updates stored, how long their commits take, compactions. */
export class SyncMetrics {
  /** Yjs updates appended to the logs, from sockets and from REST changes. */
  updatesStored = 0;
  readonly commitSeconds = new Buckets(COMMIT_SECONDS_BUCKETS);
  compactions = 0;
  compactionFailures = 0;

  /** One transaction that stored `updates` updates (a batch from sockets, or a REST change). */
  committed(updates: number, seconds: number): void {
    this.updatesStored += updates;
    this.commitSeconds.observe(seconds);
  }
}
