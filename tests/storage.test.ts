import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { UserFiles, UserFileMissingError } from '../server/storage/user-files.ts';
import { USER_FILE_MIGRATIONS } from '../server/storage/schema.ts';
import { tempDir } from './helpers/server.ts';

const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve));

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

test('user files: the LRU keeps at most the cap open, but never evicts a pinned handle', async () => {
  const dir = tempDir();
  const files = new UserFiles(dir, 3);
  try {
    for (let i = 1; i <= 6; i += 1) files.create(String(i), () => {});
    await nextTurn();
    assert.equal(files.openCount, 3);
    const pinned = files.pin('1');
    for (let i = 2; i <= 6; i += 1) files.get(String(i));
    // Within one turn nothing a caller holds is closed under it.
    assert.equal(files.openCount, 6);
    await nextTurn();
    assert.equal(files.openCount, 3);
    assert.ok(pinned.file.db.open, 'pinned handle stays open');
    assert.equal(pinned.file.db.prepare('SELECT 1 AS one').get()!.constructor, Object);
    pinned.release();
    for (let i = 2; i <= 6; i += 1) files.get(String(i));
    await nextTurn();
    assert.ok(!pinned.file.db.open, 'released handle can be evicted');
  } finally {
    files.closeAll();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('user files: a failed initialisation leaves no file behind', () => {
  const dir = tempDir();
  const files = new UserFiles(dir, 3);
  try {
    assert.throws(() => files.create('7', () => {
      throw new Error('boom');
    }), /boom/);
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
