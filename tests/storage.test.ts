import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { UserFiles, UserFileMissingError } from '../server/storage/user-files.ts';
import { StorageBusyError, isRetryableStorageError } from '../server/storage/errors.ts';
import { USER_FILE_MIGRATIONS } from '../server/storage/schema.ts';
import { tempDir } from './helpers/server.ts';

test('user files: created in WAL mode at the current schema version', () => {
  const dir = tempDir();
  const files = new UserFiles(dir, 4);
  try {
    const file = files.create('100', () => {});
    assert.equal(file.db.pragma('journal_mode', { simple: true }), 'wal');
    assert.equal(file.db.pragma('user_version', { simple: true }), USER_FILE_MIGRATIONS.length);
    assert.ok(fs.existsSync(path.join(dir, 'users', '100.sqlite')));
  } finally {
    files.closeAll();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('user files: only snowflake ids ever become paths', () => {
  const dir = tempDir();
  const files = new UserFiles(dir, 4);
  try {
    for (const bad of ['../directory', '1/../../x', 'abc', '', '01', '1.sqlite']) {
      assert.throws(() => files.pathOf(bad), /refusing/, bad);
      assert.throws(() => files.get(bad), /refusing/, bad);
    }
    assert.throws(() => files.get('12345'), UserFileMissingError, 'a lookup never creates a file');
    assert.ok(!fs.existsSync(path.join(dir, 'users', '12345.sqlite')));
  } finally {
    files.closeAll();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('user files: never more than the cap open; pinned handles stay; all pinned means busy', () => {
  const dir = tempDir();
  const files = new UserFiles(dir, 3);
  const closing: string[] = [];
  files.onClosing((id) => closing.push(id));
  try {
    for (let i = 1; i <= 6; i += 1) {
      files.create(String(i), () => {});
      assert.ok(files.openCount <= 3, `open after creating ${i}: ${files.openCount}`);
    }
    assert.deepEqual(closing, ['1', '2', '3'], 'least recently used first, each announced before it closes');
    const pinned = files.pin('1');
    for (let i = 2; i <= 6; i += 1) {
      files.get(String(i));
      assert.ok(files.openCount <= 3);
    }
    assert.ok(pinned.file.db.open, 'a pinned handle is never closed to make room');
    assert.equal(pinned.file.db.prepare('SELECT 1 AS one').get()!.constructor, Object);
    // Every open file pinned: a fourth cannot be opened, and says so in a way callers retry.
    const more = [files.pin('5'), files.pin('6')];
    assert.throws(
      () => files.get('2'),
      (error: unknown) => error instanceof StorageBusyError && isRetryableStorageError(error),
    );
    assert.equal(files.openCount, 3);
    for (const held of more) held.release();
    pinned.release();
    for (let i = 2; i <= 4; i += 1) files.get(String(i));
    assert.ok(!pinned.file.db.open, 'a released handle can be closed to make room');
    // use() holds the file for the call only.
    assert.equal(
      files.use('1', (file) => file.pins),
      1,
    );
    assert.equal(files.use('1', (file) => file).pins, 0);
  } finally {
    files.closeAll();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('user files: a failed initialisation leaves no file behind', () => {
  const dir = tempDir();
  const files = new UserFiles(dir, 3);
  try {
    assert.throws(
      () =>
        files.create('7', () => {
          throw new Error('boom');
        }),
      /boom/,
    );
    assert.ok(!fs.existsSync(path.join(dir, 'users', '7.sqlite')));
  } finally {
    files.closeAll();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a user file from a newer server is refused rather than misread', () => {
  const dir = tempDir();
  try {
    fs.mkdirSync(path.join(dir, 'users'));
    const db = new Database(path.join(dir, 'users', '9.sqlite'));
    db.pragma(`user_version = ${USER_FILE_MIGRATIONS.length + 5}`);
    db.close();
    const files = new UserFiles(dir, 3);
    assert.throws(() => files.get('9'), /newer than this server/);
    files.closeAll();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
