/**
 * Snowflake worker ids leased in Redis (server/cluster/worker-ids.ts, docs/cluster.md): the
 * scripts against a real redis-server, and the leased id generator (server/storage/ids.ts) on top
 * of them, with clocks the tests move. The nodes themselves: tests/cluster.test.ts.
 */
import { test, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import type { Redis } from 'ioredis';
import { MAX_WORKER_ID, snowflakeTimeMs } from '../shared/snowflake.ts';
import { connectRedis } from '../server/cluster/redis.ts';
import { CLOCK_SKEW_ALLOWANCE_MS, NO_FREE_WORKER_ID, WorkerIds, workerKey, workerUntilKey } from '../server/cluster/worker-ids.ts';
import { IdsUnavailableError, createLeasedIdGenerator, type ReservationMark } from '../server/storage/ids.ts';
import { isRetryableStorageError } from '../server/storage/errors.ts';
import { createLogger } from '../server/log.ts';
import { captureLog } from './fixtures/log.ts';
import { RedisServer, missingRedis } from './helpers/redis.ts';

const skip = missingRedis();
const LEASE_MS = 2000;
const silent = createLogger('silent');
let server: RedisServer;
let redis: Redis;

before(async () => {
  if (skip !== undefined) return;
  server = await RedisServer.start();
  redis = await connectRedis(server.url, silent, 'worker-ids-test');
});

after(async () => {
  if (skip !== undefined) return;
  redis.disconnect();
  await server.close();
});

beforeEach(async () => {
  if (skip !== undefined) return;
  await redis.flushall();
});

const workerOf = (id: string) => Number((BigInt(id) >> 12n) & BigInt(MAX_WORKER_ID));
/** A stand-in for ids.sqlite's mark, in memory: each test (and each simulated data folder) its own. */
function fileMark(initial = 0): ReservationMark & { value: number } {
  const mark = {
    value: initial,
    read: () => mark.value,
    raise: (untilMs: number) => {
      mark.value = Math.max(mark.value, untilMs);
    },
  };
  return mark;
}

/** Holds every worker id from `from` up that is free, as some other node would. */
async function holdAllFree(from = 1): Promise<void> {
  for (let n = from; n <= MAX_WORKER_ID; n += 1) await redis.set(workerKey(n), 'elsewhere|0', 'NX');
}

test('nodes lease distinct worker ids from 1 up (0 is for processes without Redis), each marked reserved ahead', { skip }, async () => {
  const started = Date.now();
  const mark = fileMark();
  const holders = await Promise.all(['a|1', 'b|1', 'c|1'].map((holder) => WorkerIds.acquire(redis, holder, LEASE_MS, mark, silent)));
  assert.deepEqual(holders.map((h) => h.workerId).sort(), [1, 2, 3]);
  for (const holder of holders) {
    const held = holder.current();
    assert.ok(held);
    assert.equal(await redis.get(workerKey(held.workerId)), ['a|1', 'b|1', 'c|1'][holders.indexOf(holder)]);
    const ttl = await redis.pttl(workerKey(held.workerId));
    assert.ok(ttl > 0 && ttl <= LEASE_MS, `expires (${ttl} ms left)`);
    // Nothing was marked before: it starts past anything a former holder could have reserved ahead.
    assert.ok(held.fromMs >= started + LEASE_MS + CLOCK_SKEW_ALLOWANCE_MS);
    assert.equal(held.untilMs, held.fromMs + LEASE_MS);
    assert.equal(Number(await redis.get(workerUntilKey(held.workerId))), held.untilMs);
    assert.ok(mark.value >= held.untilMs, 'ids.sqlite is marked past the first range');
  }
});

test('a renewal moves the mark ahead; the next holder starts at the mark even with a clock an hour behind', { skip }, async () => {
  let now = Date.now();
  const first = await WorkerIds.acquire(redis, 'a|1', LEASE_MS, fileMark(), silent, () => now);
  const held = first.current();
  assert.ok(held);
  now = held.fromMs + 1500;
  await first.renew();
  assert.equal(first.current(), held, 'the same holding, renewed');
  assert.equal(held.untilMs, now + LEASE_MS);
  assert.equal(Number(await redis.get(workerUntilKey(held.workerId))), held.untilMs);
  await first.release();
  assert.equal(await redis.exists(workerKey(held.workerId)), 0, 'given back');
  assert.equal(first.current(), undefined, 'nothing is issued after giving it back');

  // Another data folder's mark (none): only the mark in Redis holds it back.
  const behind = await WorkerIds.acquire(redis, 'b|1', LEASE_MS, fileMark(), silent, () => now - 3_600_000);
  const next = behind.current();
  assert.equal(next?.workerId, held.workerId);
  assert.equal(next?.fromMs, held.untilMs, 'starts where the former holder had reserved up to');
});

test('the ids.sqlite mark is a floor: a worker id is not started below what a server without Redis issued', { skip }, async () => {
  const reserved = Date.now() + 3_600_000;
  const holder = await WorkerIds.acquire(redis, 'a|1', LEASE_MS, fileMark(reserved), silent);
  assert.equal(holder.current()?.fromMs, reserved);
});

test('Redis restarted without its data: a new holder starts past what the former one renewed, from the clock alone', { skip }, async () => {
  const started = Date.now();
  // The former holder took the worker id long ago; its last renewal reserved `leaseMs` past its clock.
  let formerNow = started - 60_000;
  const former = await WorkerIds.acquire(redis, 'a|1', LEASE_MS, fileMark(), silent, () => formerNow);
  formerNow = started;
  await former.renew();
  const reserved = former.current()?.untilMs ?? 0;
  assert.equal(reserved, started + LEASE_MS);
  await redis.flushall();
  const next = await WorkerIds.acquire(redis, 'b|1', LEASE_MS, fileMark(), silent);
  assert.equal(next.workerId, former.workerId);
  assert.ok((next.current()?.fromMs ?? 0) >= reserved + CLOCK_SKEW_ALLOWANCE_MS);
  // The former holder finds its lease gone at its next renewal, and takes another worker id.
  await former.renew();
  assert.notEqual(former.workerId, next.workerId);
});

test("Redis restarted without its data: a holding that started ahead of the clock is covered by ids.sqlite's mark", { skip }, async () => {
  const mark = fileMark();
  const former = await WorkerIds.acquire(redis, 'a|1', LEASE_MS, mark, silent);
  // Its first range lies ahead of the clock by more than a lease: the clock alone would not cover it.
  const reserved = former.current()?.untilMs ?? 0;
  await redis.flushall();
  const next = await WorkerIds.acquire(redis, 'b|1', LEASE_MS, mark, silent);
  assert.equal(next.workerId, former.workerId);
  assert.equal(next.current()?.fromMs, reserved);
});

test('every worker id held: the start is refused with one line', { skip }, async () => {
  await holdAllFree();
  await assert.rejects(WorkerIds.acquire(redis, 'a|1', LEASE_MS, fileMark(), silent), (error: Error) => {
    assert.equal(error.message, 'every snowflake worker id (1-1023) is held by a running node: a cluster has at most 1023 nodes');
    assert.equal(error.message, NO_FREE_WORKER_ID);
    return true;
  });
  assert.equal(await redis.exists(workerKey(0)), 0, 'worker id 0 is never leased');
});

test('ids are issued only while the lease can be counted on', { skip }, async () => {
  let now = Date.now();
  const holder = await WorkerIds.acquire(redis, 'a|1', LEASE_MS, fileMark(), silent, () => now);
  const held = holder.current();
  assert.ok(held);
  const nextId = createLeasedIdGenerator(
    () => holder.current(),
    () => now,
  );
  const first = nextId();
  assert.equal(workerOf(first), held.workerId);
  assert.equal(snowflakeTimeMs(first), held.fromMs, 'the clock is behind the start: ids begin at it');
  // A fifth of a lease before the lease could have expired in Redis, no id is issued.
  now += LEASE_MS - LEASE_MS / 5;
  assert.throws(nextId, (error: Error) => error instanceof IdsUnavailableError && isRetryableStorageError(error));
  // Renewed: issued again, after the earlier ids.
  await holder.renew();
  const second = nextId();
  assert.ok(BigInt(second) > BigInt(first));
});

test('ids are issued only inside the reserved range', () => {
  const fromMs = Date.UTC(2030, 0, 1);
  let now = fromMs;
  const holding = { workerId: 9, fromMs, untilMs: fromMs + 2 };
  const nextId = createLeasedIdGenerator(
    () => holding,
    () => now,
  );
  assert.equal(snowflakeTimeMs(nextId()), fromMs);
  now += 1;
  assert.equal(snowflakeTimeMs(nextId()), fromMs + 1);
  // The clock reaches the end of the range before a renewal moved it.
  now += 1;
  assert.throws(nextId, IdsUnavailableError);
  // So does a burst that would borrow the milliseconds past it.
  now = fromMs + 1;
  const another = { ...holding };
  const burst = createLeasedIdGenerator(
    () => another,
    () => now,
  );
  assert.throws(() => {
    for (let i = 0; i < 5000; i += 1) burst();
  }, IdsUnavailableError);
});

test('a lease taken over: the holder issues nothing until it holds a worker id again, then starts past every mark', { skip }, async () => {
  const log = captureLog();
  let now = Date.now();
  const holder = await WorkerIds.acquire(redis, 'a|1', LEASE_MS, fileMark(), log.logger, () => now);
  const nextId = createLeasedIdGenerator(
    () => holder.current(),
    () => now,
  );
  const before = nextId();
  const lost = holder.workerId ?? 0;
  // Another node took it (the lease had expired while this one was paused), and every other is held.
  await redis.set(workerKey(lost), 'intruder|1');
  await redis.set(workerUntilKey(lost), String(now + 60_000));
  await holdAllFree();
  await holder.renew();
  assert.equal(holder.current(), undefined);
  assert.throws(nextId, IdsUnavailableError);
  assert.ok(log.records.some((r) => r.msg === `${NO_FREE_WORKER_ID}; this node issues no ids until one is free` && r.level === 50));
  // One is freed: the next renewal takes it.
  const mark = now + 120_000;
  await redis.del(workerKey(700));
  await redis.set(workerUntilKey(700), String(mark));
  now += 100;
  await holder.renew();
  assert.equal(holder.workerId, 700);
  const after = nextId();
  assert.equal(workerOf(after), 700);
  assert.equal(snowflakeTimeMs(after), mark, 'starts at the mark of its new worker id');
  assert.notEqual(after, before);
});
