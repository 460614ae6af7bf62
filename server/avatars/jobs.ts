import pLimit, { type LimitFunction } from 'p-limit';
import { AppError } from '../core/app-error.ts';

/**
 * Runs image jobs at most `concurrency` at a time, with at most `maxWaiting` queued behind them.
 * Decoding is where memory goes (up to maxPixels × 4 bytes per running job) and every waiting job
 * holds its upload, so both are bounded: past them a burst is told to retry (503 + Retry-After)
 * instead of growing the heap. Bounding also keeps sharp from occupying every libuv worker thread,
 * which file I/O and password hashing share.
 */
export class JobQueue {
  private readonly limit: LimitFunction;

  constructor(
    readonly concurrency: number,
    readonly maxWaiting: number,
  ) {
    this.limit = pLimit(concurrency);
  }

  run<T>(job: () => Promise<T>): Promise<T> {
    // Counted together: p-limit reports a job as pending until a microtask later starts it.
    if (this.limit.activeCount + this.limit.pendingCount >= this.concurrency + this.maxWaiting) {
      return Promise.reject(
        new AppError('service_unavailable', 'Too many images are being processed right now; retry shortly', { headers: { 'Retry-After': '2' } }),
      );
    }
    return this.limit(job);
  }

  get running(): number {
    return this.limit.activeCount;
  }
}
