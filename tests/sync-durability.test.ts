import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { once } from 'node:events';
import Database from 'better-sqlite3';
import * as Y from 'yjs';
import { Api, registerUser, spawnServer, startServer, tempDir } from './helpers/server.ts';
import { notesChannelOf, openDevice, synced, until } from './helpers/sync.ts';
import { loadTrace, textAfter } from './helpers/traces.ts';
import { insertNote, listNotes } from '../shared/index.ts';

const logRows = (dataDir: string, userId: string) => {
  const db = new Database(path.join(dataDir, 'users', `${userId}.sqlite`), { readonly: true });
  try {
    return (db.prepare("SELECT count(*) AS n FROM doc_updates WHERE doc = 'notes'").get() as { n: number }).n;
  } finally {
    db.close();
  }
};

test('kill -9 right after a burst of edits loses none of them', async () => {
  const dir = tempDir();
  try {
    const first = await spawnServer(['--port', '0', '--data-dir', dir, '--log-level', 'warn']);
    const api = new Api(first.url);
    const user = await registerUser(api);
    const channel = await notesChannelOf(api, user);
    const writer = openDevice(first.url, channel, user.token);
    const reader = openDevice(first.url, channel, user.token);
    await Promise.all([synced(writer), synced(reader)]);
    for (let i = 0; i < 300; i += 1) {
      writer.doc.transact(() => insertNote(writer.doc, { id: String(5000 + i), content: `burst ${i}`, created_at: i }));
    }
    // The server relays only what it has stored: once the reader has all, all are on disk.
    await until(reader.doc, (d) => listNotes(d).length === 300, 'reader has the burst');
    first.child.kill('SIGKILL');
    await once(first.child, 'exit');
    writer.destroy();
    reader.destroy();

    const second = await spawnServer(['--port', '0', '--data-dir', dir, '--log-level', 'warn']);
    try {
      const fresh = openDevice(second.url, channel, user.token);
      try {
        await synced(fresh);
        assert.equal(listNotes(fresh.doc).length, 300);
        assert.equal(listNotes(fresh.doc).find((n) => n.id === '5299')?.content, 'burst 299');
      } finally {
        fresh.destroy();
      }
    } finally {
      second.child.kill('SIGTERM');
      await once(second.child, 'exit');
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('the first 20,000 txns of the automerge-paper trace reach a second device intact', async () => {
  const trace = loadTrace('automerge-paper.json.gz');
  const count = 20_000;
  const expected = textAfter(trace, count);
  const srv = await startServer();
  try {
    const user = await registerUser(srv.api);
    const channel = await notesChannelOf(srv.api, user);
    const writer = openDevice(srv.url, channel, user.token);
    const reader = openDevice(srv.url, channel, user.token);
    try {
      await Promise.all([synced(writer), synced(reader)]);
      const text = writer.doc.getText('trace');
      for (const txn of trace.txns.slice(0, count)) {
        writer.doc.transact(() => {
          for (const [pos, del, ins] of txn.patches) {
            if (del > 0) text.delete(pos, del);
            if (ins) text.insert(pos, ins);
          }
        });
      }
      assert.equal(text.toString(), expected);
      await until(
        reader.doc,
        (d) => d.getText('trace').length === expected.length && d.getText('trace').toString() === expected,
        'reader has the trace',
        60_000,
      );
    } finally {
      writer.destroy();
      reader.destroy();
    }
  } finally {
    await srv.close();
  }
});

test('compaction folds the log into a snapshot; a fresh device still gets the identical document', async () => {
  const srv = await startServer({ compactAfterUpdates: 100, compactDebounceMs: 0, compactMaxWaitMs: 0, docUnloadDelayMs: 60_000 });
  try {
    const user = await registerUser(srv.api);
    const channel = await notesChannelOf(srv.api, user);
    const writer = openDevice(srv.url, channel, user.token);
    try {
      await synced(writer);
      const text = writer.doc.getText('t');
      for (let i = 0; i < 400; i += 1) text.insert(text.length, `line ${i}\n`);
      for (let i = 0; i < 50; i += 1) text.delete(0, 3);
      const expected = text.toString();
      const witness = openDevice(srv.url, channel, user.token);
      await until(witness.doc, (d) => d.getText('t').toString() === expected, 'witness caught up');
      witness.destroy();
      // Compaction runs on its own timer once the log passes 100 updates: wait for it to show.
      const deadline = Date.now() + 20_000;
      while (logRows(srv.dataDir, user.id) >= 100) {
        assert.ok(Date.now() < deadline, `log still has ${logRows(srv.dataDir, user.id)} rows`);
        await new Promise((resolve) => setImmediate(resolve));
      }
      const fresh = openDevice(srv.url, channel, user.token);
      try {
        await synced(fresh);
        assert.equal(fresh.doc.getText('t').toString(), expected);
        assert.deepEqual(Y.encodeStateVector(fresh.doc), Y.encodeStateVector(writer.doc));
      } finally {
        fresh.destroy();
      }
    } finally {
      writer.destroy();
    }
  } finally {
    await srv.close();
  }
});
