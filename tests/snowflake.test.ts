import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { SnowflakeGenerator, compareSnowflakes, isSnowflake, snowflakeTimeMs, SNOWFLAKE_EPOCH_MS } from '../shared/snowflake.ts';
import { DirectoryFile } from '../server/storage/directory.ts';
import { openStorage } from '../server/storage/index.ts';
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
  const dataDir = tempDir();
  try {
    let now = Date.UTC(2026, 5, 1);
    let storage = openStorage({ dataDir, maxOpenUserFiles: 4, workerId: 0, clock: () => now });
    const before = Array.from({ length: 10 }, () => storage.nextId());
    storage.close();
    now -= 3_600_000; // restarted with a clock an hour behind
    storage = openStorage({ dataDir, maxOpenUserFiles: 4, workerId: 0, clock: () => now });
    const after = storage.nextId();
    assert.ok(compareSnowflakes(after, before.at(-1)!) > 0, `${after} must follow ${before.at(-1)}`);
    storage.close();
  } finally {
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
});

test('ids taken inside a transaction that rolled back are never issued again, even after a restart with the clock behind', () => {
  const dataDir = tempDir();
  try {
    let now = Date.UTC(2026, 5, 1);
    let storage = openStorage({ dataDir, maxOpenUserFiles: 4, workerId: 0, clock: () => now });
    const taken = [storage.nextId()];
    // Inside a directory transaction (as registration takes its session id), the clock runs past
    // the reservation, so the generator must reserve again; then the transaction rolls back.
    const directoryFile = new DirectoryFile(dataDir);
    assert.throws(
      () =>
        directoryFile.transaction(() => {
          for (let i = 0; i < 5; i += 1) {
            now += 2_000;
            taken.push(storage.nextId());
          }
          throw new Error('rolled back');
        }),
      /rolled back/,
    );
    directoryFile.close();
    storage.close();

    now = Date.UTC(2026, 5, 1) - 3_600_000; // restarted with a clock an hour behind the first id
    storage = openStorage({ dataDir, maxOpenUserFiles: 4, workerId: 0, clock: () => now });
    const newest = taken.reduce((a, b) => (compareSnowflakes(a, b) > 0 ? a : b));
    const after = Array.from({ length: 5 }, () => storage.nextId());
    storage.close();
    assert.ok(compareSnowflakes(after[0]!, newest) > 0, `${after[0]} must follow ${newest}, taken in the rolled-back transaction`);
    for (let i = 1; i < after.length; i += 1) assert.ok(compareSnowflakes(after[i]!, after[i - 1]!) > 0);
    assert.equal(new Set([...taken, ...after]).size, taken.length + after.length, 'no id was issued twice');
  } finally {
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
});

test('a data folder from before ids.sqlite keeps its reservation: read once from the directory, then only from ids.sqlite', () => {
  const dataDir = tempDir();
  try {
    // What an older server left: its reservation in the directory's meta table, no ids.sqlite.
    const legacyMs = Date.UTC(2027, 0, 1);
    new DirectoryFile(dataDir).close();
    const db = new Database(path.join(dataDir, 'directory.sqlite'));
    db.prepare("INSERT INTO meta (key, value) VALUES ('snowflake_high_water_ms', ?)").run(String(legacyMs));
    db.close();

    const now = Date.UTC(2026, 0, 1); // a year before that reservation
    let storage = openStorage({ dataDir, maxOpenUserFiles: 4, workerId: 0, clock: () => now });
    const first = storage.nextId();
    storage.close();
    assert.ok(snowflakeTimeMs(first) >= legacyMs, 'no id below the old reservation (every id it covered was below it)');
    const directory = new Database(path.join(dataDir, 'directory.sqlite'), { readonly: true });
    assert.deepEqual(directory.prepare('SELECT key FROM meta').all(), [], 'the old key is consumed');
    directory.close();

    storage = openStorage({ dataDir, maxOpenUserFiles: 4, workerId: 0, clock: () => now });
    const second = storage.nextId();
    storage.close();
    assert.ok(compareSnowflakes(second, first) > 0, 'after a restart, ids.sqlite alone carries the reservation');
  } finally {
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
});
