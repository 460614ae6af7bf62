import { randomBytes } from 'node:crypto';

/**
 * Request ids for logs and the `X-Request-Id` header: a random prefix per server (so ids from two
 * runs never collide in one log) and a counter.
 */
export function createRequestIds(): () => string {
  const bootId = randomBytes(3).toString('hex');
  let counter = 0;
  return () => {
    counter += 1;
    return `${bootId}-${counter.toString(36)}`;
  };
}
