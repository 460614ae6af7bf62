import { AppError } from '../core/app-error.ts';

/** The answer to a request the cluster cannot serve right now: 503, retry in a second. */
export function unavailable(message: string): AppError {
  return new AppError('service_unavailable', message, { headers: { 'Retry-After': '1' } });
}
