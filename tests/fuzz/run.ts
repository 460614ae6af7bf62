import { parseArgs } from 'node:util';
import { randomInt } from 'node:crypto';
import { missingRedis, RedisServer } from '../helpers/redis.ts';
import { fuzzDirectoryStores } from './directory.ts';
import { type FuzzRun, fuzzDocumentShapes, fuzzJsonBodies, fuzzSyncFrames } from './properties.ts';

/**
 * `npm run fuzz [-- --minutes 10] [--seed N] [--redis-url redis://…]`: the fuzz properties of
 * `npm test`, each for a share of the time, with a random seed printed first so a failure can be
 * replayed with `--seed`. With `--redis-url`, the sync frames go through a two-node cluster on that
 * Redis (an edge node relaying to the owner). The directory stores' property always starts a
 * redis-server of its own (it empties its database on every run), skipped when there is none.
 */
const { values } = parseArgs({ options: { minutes: { type: 'string', default: '10' }, seed: { type: 'string' }, 'redis-url': { type: 'string' } } });
const minutes = Number(values.minutes);
if (!Number.isFinite(minutes) || minutes <= 0) throw new Error('--minutes must be a positive number');
const seed = values.seed === undefined ? randomInt(2 ** 31) : Number(values.seed);
console.log(`fuzz: seed ${seed}, ${minutes} min (replay with: npm run fuzz -- --seed ${seed} --minutes ${minutes})`);

async function directoryStores(run: FuzzRun): Promise<void> {
  const missing = missingRedis();
  if (missing !== undefined) {
    process.stdout.write(`skipped (${missing}); `);
    return;
  }
  const redis = await RedisServer.start();
  try {
    await fuzzDirectoryStores(run, redis.url);
  } finally {
    await redis.close();
  }
}

const properties = [
  ['sync frames', fuzzSyncFrames, 0.4],
  ['document shapes', fuzzDocumentShapes, 0.2],
  ['JSON bodies', fuzzJsonBodies, 0.2],
  ['directory stores (SQLite against Redis)', directoryStores, 0.2],
] as const;
for (const [name, property, share] of properties) {
  const started = Date.now();
  process.stdout.write(`fuzz: ${name}... `);
  await property({
    seed,
    numRuns: Number.MAX_SAFE_INTEGER,
    timeLimitMs: minutes * 60_000 * share,
    ...(values['redis-url'] === undefined ? {} : { redisUrl: values['redis-url'] }),
  });
  console.log(`held for ${((Date.now() - started) / 1000).toFixed(0)} s`);
}
console.log('fuzz: every property held');
