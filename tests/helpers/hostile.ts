import path from 'node:path';
import Database from 'better-sqlite3';
import * as encoding from 'lib0/encoding';

/** A document key shaped like a path out of the data folder: it must never be used as one. */
export const TRAVERSAL_KEY = ['..', '..', 'etc', 'passwd'].join('/');

/**
 * Updates a hostile client can send: each passes `Y.decodeUpdate`, and each hurt the server before
 * it judged updates before storing them. Built byte by byte in the Yjs V1 update format.
 */

/** One item (client `client`, clock 0) whose parent is a later item of its own client: Yjs throws half-way through applying it. */
export function forwardReferenceUpdate(client = 77): Uint8Array {
  const e = encoding.createEncoder();
  encoding.writeVarUint(e, 1); // clients with structs
  encoding.writeVarUint(e, 1); // structs of that client
  encoding.writeVarUint(e, client);
  encoding.writeVarUint(e, 0); // first clock
  encoding.writeUint8(e, 8); // info: ContentAny, no origins, no parentSub
  encoding.writeVarUint(e, 0); // the parent is an item id...
  encoding.writeVarUint(e, client);
  encoding.writeVarUint(e, 5); // ...a later one of its own client
  encoding.writeVarUint(e, 1); // one value
  encoding.writeAny(e, 'x');
  encoding.writeVarUint(e, 0); // no deletions
  return encoding.toUint8Array(e);
}

/** No content, only deletions of one range each in `clients` clients the document has never seen. */
export function unknownDeletesUpdate(clients: number, firstClient = 1_000_000): Uint8Array {
  const e = encoding.createEncoder();
  encoding.writeVarUint(e, 0);
  encoding.writeVarUint(e, clients);
  for (let c = 0; c < clients; c += 1) {
    encoding.writeVarUint(e, firstClient + c);
    encoding.writeVarUint(e, 1);
    encoding.writeVarUint(e, 0); // clock
    encoding.writeVarUint(e, 1); // length
  }
  return encoding.toUint8Array(e);
}

/** `bytes` of text from a client whose earlier updates never arrive: all of it waits, pending. */
export function orphanTextUpdate(bytes: number, client = 4242): Uint8Array {
  const e = encoding.createEncoder();
  encoding.writeVarUint(e, 1);
  encoding.writeVarUint(e, 1);
  encoding.writeVarUint(e, client);
  encoding.writeVarUint(e, 1000); // starts after clocks nobody has
  encoding.writeUint8(e, 4 | 0x80); // ContentString, with an origin
  encoding.writeVarUint(e, client); // origin: its own missing item
  encoding.writeVarUint(e, 999);
  encoding.writeVarString(e, 'x'.repeat(bytes));
  encoding.writeVarUint(e, 0);
  return encoding.toUint8Array(e);
}

/** Writes updates straight into a stopped server's user file, as an older server would have stored them. */
export function storeRawUpdates(dataDir: string, userId: string, doc: 'notes' | 'settings', updates: Uint8Array[]): void {
  const db = new Database(path.join(dataDir, 'users', `${userId}.sqlite`));
  try {
    db.prepare('INSERT OR IGNORE INTO docs (name, created_at) VALUES (?, 0)').run(doc);
    const insert = db.prepare('INSERT INTO doc_updates (doc, data) VALUES (?, ?)');
    for (const update of updates) insert.run(doc, update);
  } finally {
    db.close();
  }
}

/** Rows of a (stopped or running) server's user file, read on a separate connection. */
export function countRows(dataDir: string, userId: string, sql: string): number {
  const db = new Database(path.join(dataDir, 'users', `${userId}.sqlite`), { readonly: true });
  try {
    return (db.prepare(sql).get() as { n: number }).n;
  } finally {
    db.close();
  }
}
