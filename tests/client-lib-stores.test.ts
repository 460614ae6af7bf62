import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import * as Y from 'yjs';
import { IDBFactory } from 'fake-indexeddb';
import WebSocket from 'ws';
import {
  MemoryStore,
  PlexichatClient,
  openFileStore,
  openIndexedDbStore,
  type CompactionOptions,
  type IdbFactoryLike,
  type LocalStore,
  type StoredUpdate,
} from '../client-lib/index.ts';
import { insertNote, listNotes } from '../shared/index.ts';
import { tempDir } from './helpers/server.ts';

/**
 * Every store must: keep appends in order, survive a reopen, fold settled records into a snapshot
 * once past its limit, and never fold (or lose) a local record the server has not acknowledged.
 */
async function exerciseStore(openStore: () => Promise<LocalStore>): Promise<void> {
  const source = new Y.Doc();
  const records: { seq: number; local: boolean; update: Uint8Array }[] = [];
  source.on('update', (update: Uint8Array) => records.push({ seq: records.length + 1, local: records.length % 3 !== 0, update }));
  for (let i = 0; i < 60; i += 1) source.transact(() => insertNote(source, { id: String(1000 + i), content: `note ${i}`, created_at: i }));

  let store = await openStore();
  await store.setMeta('channel_id', '42');
  for (const r of records.slice(0, 40)) await store.append(r);
  await store.setAcked(30);
  for (const r of records.slice(40)) await store.append(r);
  await store.close();

  store = await openStore();
  const state = await store.load();
  await store.close();
  assert.equal(state.meta.channel_id, '42');
  assert.equal(state.acked, 30);
  assert.equal(state.lastSeq, 60);
  assert.ok(state.snapshot !== null, 'settled records were compacted into a snapshot');
  assert.ok(state.updates.length < 60, `${state.updates.length} records left`);
  // Every unacknowledged local record is still its own record.
  const pending = records.filter((r) => r.local && r.seq > 30).map((r) => r.seq);
  for (const seq of pending)
    assert.ok(
      state.updates.some((r) => r.seq === seq && r.local),
      `pending record ${seq} kept`,
    );
  // And the whole document comes back.
  const restored = new Y.Doc();
  if (state.snapshot) Y.applyUpdate(restored, state.snapshot);
  for (const r of state.updates) Y.applyUpdate(restored, r.update);
  assert.deepEqual(listNotes(restored), listNotes(source));
}

test('memory store: order, compaction, pending records kept', async () => {
  const store = new MemoryStore({ maxRecords: 10 });
  await exerciseStore(async () => store);
});

test('file store (SQLite): survives reopening, compacts, keeps pending records', async () => {
  const dir = tempDir('plexichat-store-');
  try {
    await exerciseStore(() => openFileStore(path.join(dir, 'notes.sqlite'), { maxRecords: 10 }));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('IndexedDB store (on fake-indexeddb): survives reopening, compacts, keeps pending records', async () => {
  const factory = new IDBFactory() as unknown as IdbFactoryLike;
  await exerciseStore(() => openIndexedDbStore('plexichat-notes', { indexedDB: factory, maxRecords: 10 }));
});

test('notes edited offline on the IndexedDB store are all there after an app restart', async () => {
  const factory = new IDBFactory() as unknown as IdbFactoryLike;
  const seed = await openIndexedDbStore('offline-notes', { indexedDB: factory });
  // As left by an earlier online session: the store already knows its channel.
  await seed.setMeta('channel_id', '123456789');
  await seed.close();
  const client = new PlexichatClient({ baseUrl: 'http://127.0.0.1:1', token: 'pxc_unused_token_1234' });
  const first = await client.openNotes({ store: await openIndexedDbStore('offline-notes', { indexedDB: factory }), WebSocket, connect: false });
  const id = first.add('draft');
  first.setText(id, 'draft, edited offline');
  first.add('second');
  await first.close();
  const second = await client.openNotes({ store: await openIndexedDbStore('offline-notes', { indexedDB: factory }), WebSocket, connect: false });
  assert.deepEqual(
    second.list().map((n) => n.content),
    ['second', 'draft, edited offline'],
  );
  assert.equal(second.pending, 3);
  assert.equal(second.status, 'offline');
  await second.close();
});

/** Remote (settled) records of a document of `count` notes, one note per record. */
function noteRecords(count: number, local: (seq: number) => boolean = () => false): StoredUpdate[] {
  const source = new Y.Doc();
  const records: StoredUpdate[] = [];
  source.on('update', (update: Uint8Array) => records.push({ seq: records.length + 1, local: local(records.length + 1), update }));
  for (let i = 0; i < count; i += 1) source.transact(() => insertNote(source, { id: String(2000 + i), content: `note ${i}`, created_at: i }));
  return records;
}

/**
 * The one compaction trigger every store shares: it counts remote records and acknowledged local
 * ones (an acknowledgement alone never compacts; the next append does), by number or by bytes.
 */
async function exerciseTrigger(openStore: (options: CompactionOptions) => Promise<LocalStore>): Promise<void> {
  const records = noteRecords(5, (seq) => seq === 1 || seq === 2 || seq === 4);
  const [l1, l2, r3, l4, r5] = records as [StoredUpdate, StoredUpdate, StoredUpdate, StoredUpdate, StoredUpdate];
  const byCount = await openStore({ maxRecords: 4 });
  try {
    for (const r of [l1, l2, r3]) await byCount.append(r);
    await byCount.setAcked(2);
    assert.equal((await byCount.load()).updates.length, 3, 'an acknowledgement alone does not compact');
    await byCount.append(l4);
    assert.equal((await byCount.load()).updates.length, 4, 'three settled records and a pending one: not yet');
    await byCount.append(r5);
    const state = await byCount.load();
    assert.deepEqual(
      state.updates.map((r) => r.seq),
      [4],
      'the fourth settled record compacts; the pending one stays',
    );
    assert.ok(state.snapshot !== null);
  } finally {
    await byCount.close();
  }

  const remote = noteRecords(3);
  const [first, second, third] = remote as [StoredUpdate, StoredUpdate, StoredUpdate];
  const byBytes = await openStore({ maxBytes: first.update.byteLength + second.update.byteLength });
  try {
    await byBytes.append(first);
    assert.equal((await byBytes.load()).updates.length, 1);
    await byBytes.append(second);
    assert.deepEqual((await byBytes.load()).updates, [], 'the byte limit reached: everything settled is folded');
    await byBytes.append(third);
    assert.equal((await byBytes.load()).updates.length, 1, 'and the count starts over');
  } finally {
    await byBytes.close();
  }
}

test('every store compacts at the same point: the shared trigger, by records and by bytes', async () => {
  await exerciseTrigger(async (options) => new MemoryStore(options));
  const dir = tempDir('plexichat-store-');
  try {
    let n = 0;
    await exerciseTrigger((options) => openFileStore(path.join(dir, `trigger-${n++}.sqlite`), options));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  const factory = new IDBFactory() as unknown as IdbFactoryLike;
  let n = 0;
  await exerciseTrigger((options) => openIndexedDbStore(`trigger-${n++}`, { indexedDB: factory, ...options }));
});

type OpenRequest = ReturnType<IdbFactoryLike['open']>;
type Database = OpenRequest['result'];
type Transaction = ReturnType<Database['transaction']>;
type Handler = ((event: never) => void) | null;

/**
 * Passes everything through to `inner`, except that `holdNext(skip, gap)` makes the transaction
 * opened after the next `skip` ones deliver its `complete` event only once `gap()` has settled:
 * what a tab busy with other work would see. Whatever the store does in that gap races with
 * whatever it does once that transaction is complete.
 */
function holdingFactory(inner: IdbFactoryLike): { factory: IdbFactoryLike; holdNext(skip: number, gap: () => Promise<void>): void } {
  let hold: { skip: number; gap: () => Promise<void> } | null = null;
  const wrapTransaction = (tx: Transaction): Transaction => {
    if (hold === null) return tx;
    if (hold.skip > 0) {
      hold.skip -= 1;
      return tx;
    }
    const { gap } = hold;
    hold = null;
    return {
      objectStore: (name) => tx.objectStore(name),
      get error() {
        return tx.error;
      },
      get oncomplete() {
        return tx.oncomplete;
      },
      set oncomplete(handler: Handler) {
        tx.oncomplete = handler === null ? null : (event: never) => void gap().then(() => handler(event));
      },
      get onerror() {
        return tx.onerror;
      },
      set onerror(handler: Handler) {
        tx.onerror = handler;
      },
      get onabort() {
        return tx.onabort;
      },
      set onabort(handler: Handler) {
        tx.onabort = handler;
      },
    };
  };
  const wrapDatabase = (db: Database): Database => ({
    get objectStoreNames() {
      return db.objectStoreNames;
    },
    createObjectStore: (name, options) => db.createObjectStore(name, options),
    transaction: (names, mode) => wrapTransaction(db.transaction(names, mode)),
    close: () => db.close(),
  });
  const factory: IdbFactoryLike = {
    open(name, version) {
      const request = inner.open(name, version);
      return {
        get result() {
          return wrapDatabase(request.result);
        },
        get error() {
          return request.error;
        },
        get onsuccess() {
          return request.onsuccess;
        },
        set onsuccess(handler: Handler) {
          request.onsuccess = handler;
        },
        get onerror() {
          return request.onerror;
        },
        set onerror(handler: Handler) {
          request.onerror = handler;
        },
        get onupgradeneeded() {
          return request.onupgradeneeded;
        },
        set onupgradeneeded(handler: Handler) {
          request.onupgradeneeded = handler;
        },
      };
    },
  };
  return {
    factory,
    holdNext(skip, gap) {
      hold = { skip, gap };
    },
  };
}

test('IndexedDB store: an append racing a compaction is neither lost nor folded twice', async () => {
  const holding = holdingFactory(new IDBFactory() as unknown as IdbFactoryLike);
  const store = await openIndexedDbStore('race', { indexedDB: holding.factory, maxRecords: 3 });
  const records = noteRecords(4);
  const [r1, r2, r3, r4] = records as [StoredUpdate, StoredUpdate, StoredUpdate, StoredUpdate];
  await store.append(r1);
  await store.append(r2);
  // r3 is the third settled record: its append compacts. The compaction's first transaction (the
  // one after r3's own) tells it is complete only after r4 has been appended, which is again over
  // the limit as the count stood before that compaction.
  let raced: Promise<void> = Promise.resolve();
  holding.holdNext(1, () => {
    raced = store.append(r4);
    return raced;
  });
  await store.append(r3);
  await raced;
  await store.close();

  const reopened = await openIndexedDbStore('race', { indexedDB: holding.factory, maxRecords: 3 });
  const state = await reopened.load();
  await reopened.close();
  const restored = new Y.Doc();
  if (state.snapshot) Y.applyUpdate(restored, state.snapshot);
  for (const r of state.updates) Y.applyUpdate(restored, r.update);
  assert.deepEqual(
    listNotes(restored).map((n) => n.content),
    ['note 3', 'note 2', 'note 1', 'note 0'],
    'every append is in the document',
  );
  // Each record is in exactly one place: the snapshot holds what was folded, the log the rest.
  const folded = new Y.Doc();
  if (state.snapshot) Y.applyUpdate(folded, state.snapshot);
  const inLog = state.updates.map((r) => r.seq);
  assert.equal(listNotes(folded).length + inLog.length, 4, `snapshot ${listNotes(folded).length} notes, log ${inLog.join(',')}`);
  assert.equal(state.lastSeq, 4);
});
