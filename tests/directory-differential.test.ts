import { after, test } from 'node:test';
import { fuzzDirectoryStores } from './fuzz/directory.ts';
import { missingRedis, RedisServer } from './helpers/redis.ts';

/*
 * The directory's two stores, SQLite and Redis, against each other (tests/fuzz/directory.ts): random
 * sequences of calls answer the same in both and leave the same directory. A fixed seed and a
 * bounded number of runs here; `npm run fuzz` runs it for minutes with a random seed.
 */
const SEED = 20261130;

test('fuzz: the SQLite and Redis directory stores answer every sequence of calls alike and end alike', { skip: missingRedis(), timeout: 120_000 }, async () => {
  const redis = await RedisServer.start();
  after(() => redis.close());
  await fuzzDirectoryStores({ seed: SEED, numRuns: 250 }, redis.url);
});
