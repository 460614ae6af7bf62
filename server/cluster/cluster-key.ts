import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

/** The secret the nodes of one cluster prove to each other when they link (links.ts), in the shared data folder. */
const CLUSTER_KEY_FILE = 'cluster.key';
const KEY_BYTES = 32;
/** Shorter than this, a file an operator put there is no secret worth the name. */
const MIN_KEY_BYTES = 16;

/**
 * Reads the cluster's key from the data folder every node shares, making it on the first start:
 * random bytes written to a file of this process's own (mode 0600), then hard-linked to the key's
 * name, which fails if the name exists. So two nodes starting at once both end up reading the one
 * key that won, and no node ever reads a key half written.
 */
export function readClusterKey(dataDir: string): Buffer {
  const file = path.join(dataDir, CLUSTER_KEY_FILE);
  const existing = readIfThere(file);
  if (existing !== undefined) return checked(file, existing);
  const draft = path.join(dataDir, `${CLUSTER_KEY_FILE}.${randomBytes(6).toString('hex')}.tmp`);
  const fd = fs.openSync(draft, 'wx', 0o600);
  try {
    fs.writeSync(fd, randomBytes(KEY_BYTES));
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  try {
    fs.linkSync(draft, file);
  } catch (error) {
    // Another node made it first: theirs is the key.
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
  } finally {
    fs.rmSync(draft, { force: true });
  }
  return checked(file, fs.readFileSync(file));
}

function readIfThere(file: string): Buffer | undefined {
  try {
    return fs.readFileSync(file);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
}

function checked(file: string, key: Buffer): Buffer {
  if (key.length < MIN_KEY_BYTES) throw new Error(`${file} holds ${key.length} bytes, too few for the cluster key (at least ${MIN_KEY_BYTES})`);
  return key;
}
