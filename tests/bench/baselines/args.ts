import { parseArgs } from 'node:util';

/**
 * The flags every baseline server takes: `--port 0` (any free port), a data folder when it
 * persists, and the Redis its instances share when it runs as a cluster.
 */
export function baselineArgs(): { port: number; dataDir: string | undefined; redisUrl: string | undefined } {
  const { values } = parseArgs({
    options: { port: { type: 'string', default: '0' }, 'data-dir': { type: 'string' }, 'redis-url': { type: 'string' } },
  });
  return { port: Number(values.port), dataDir: values['data-dir'], redisUrl: values['redis-url'] };
}

/** The line the harness waits for, the same for every baseline. */
export function announce(port: number): void {
  process.stdout.write(`listening on http://127.0.0.1:${port}\n`);
}

/** The bearer token the Fastify baseline seeds its one session with (loopback only, throwaway data). */
export const FASTIFY_BENCH_TOKEN = 'pxc_benchmark_token_for_the_fastify_baseline';
