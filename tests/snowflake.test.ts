import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { SnowflakeGenerator, compareSnowflakes, isSnowflake, snowflakeTimeMs, SNOWFLAKE_EPOCH_MS } from '../shared/snowflake.ts';
import { DirectoryFile } from '../server/storage/directory.ts';
import { createIdGenerator } from '../server/storage/ids.ts';
import { tempDir } from './helpers/server.ts';

test('a burst of 200,000 ids is strictly increasing and unique', () => {
  const generator = new SnowflakeGenerator({ workerId: 7 });
  let previous = generator.next();
  const seen = new Set([previous]);
  for (let i = 0; i < 200_000; i += 1) {
    const id = generator.next();
    assert.ok(compareSnowflakes(id, previous) > 0, `${id} after ${previous}`);
    seen.add(id);
    previous = id;
  }
  assert.equal(seen.size, 200_001);
});

test('ids encode time and worker, and survive a clock stepping back', () => {
  let now = Date.UTC(2026, 0, 1);
  const generator = new SnowflakeGenerator({ workerId: 1023, now: () => now });
  const first = generator.next();
  assert.equal(snowflakeTimeMs(first), now);
  assert.equal(Number((BigInt(first) >> 12n) & 1023n), 1023);
  now -= 60_000; // the clock jumps back a minute
  const second = generator.next();
  assert.ok(compareSnowflakes(second, first) > 0);
  // 4096 ids in one frozen millisecond, then the generator borrows the next millisecond.
  const ids = Array.from({ length: 5000 }, () => generator.next());
  for (let i = 1; i < ids.length; i += 1) assert.ok(compareSnowflakes(ids[i]!, ids[i - 1]!) > 0);
});

test('isSnowflake accepts only canonical positive 64-bit decimals', () => {
  for (const ok of ['1', '123456789012345678', '9223372036854775807']) assert.ok(isSnowflake(ok), ok);
  for (const bad of ['', '0', '01', '-1', '1e3', ' 1', '1 ', 'abc', '9223372036854775808', '99999999999999999999', '../1', 1, null]) {
    assert.ok(!isSnowflake(bad), String(bad));
  }
  assert.ok(SNOWFLAKE_EPOCH_MS === Date.UTC(2024, 0, 1));
});

test('ids stay monotonic across a restart even when the clock went back', () => {
  const dir = tempDir();
  try {
    let now = Date.UTC(2026, 5, 1);
    let directory = new DirectoryFile(dir);
    let next = createIdGenerator(directory, 0, () => now);
    const before = Array.from({ length: 10 }, () => next());
    directory.close();
    now -= 3_600_000; // restarted with a clock an hour behind
    directory = new DirectoryFile(dir);
    next = createIdGenerator(directory, 0, () => now);
    const after = next();
    assert.ok(compareSnowflakes(after, before.at(-1)!) > 0, `${after} must follow ${before.at(-1)}`);
    directory.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
