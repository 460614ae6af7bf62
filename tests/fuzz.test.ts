import { test } from 'node:test';
import { fuzzDocumentShapes, fuzzJsonBodies, fuzzSyncFrames } from './fuzz/properties.ts';
import { RedisServer, missingRedis } from './helpers/redis.ts';

/*
 * The fuzz properties with a fixed seed and a bounded number of runs, so `npm test` stays fast and
 * repeatable. `npm run fuzz` runs the same properties for minutes with a random seed.
 */
const SEED = 20261130;

test('fuzz: hostile sync frames are accepted or refused with a documented code; acknowledged updates survive a restart', { timeout: 120_000 }, () =>
  fuzzSyncFrames({ seed: SEED, numRuns: 1000 }),
);

test('fuzz: whatever shapes a client writes into its documents, every REST read and repair answers documented statuses and bodies', { timeout: 120_000 }, () =>
  fuzzDocumentShapes({ seed: SEED, numRuns: 120 }),
);

test('fuzz: any JSON body or path parameter on every route answers a documented status and body', { timeout: 120_000 }, () =>
  fuzzJsonBodies({ seed: SEED, numRuns: 1000 }),
);

test('fuzz, cluster mode: hostile sync frames sent to a node that relays them to the owner earn the same answers, and nothing acknowledged is lost', {
  skip: missingRedis(),
  timeout: 120_000,
}, async () => {
  const redis = await RedisServer.start();
  try {
    await fuzzSyncFrames({ seed: SEED, numRuns: 300, redisUrl: redis.url });
  } finally {
    await redis.close();
  }
});
