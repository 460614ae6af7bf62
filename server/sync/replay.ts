import * as Y from 'yjs';
import type { Logger } from 'pino';
import type { UserFile } from '../storage/index.ts';
import { nowSeconds } from '../../shared/time.ts';
import * as repo from './repo.ts';
import type { DocName } from './repo.ts';
import { pendingBytes } from './update-check.ts';

/** Origin of updates replayed from storage. */
const STORED = Symbol('stored');

export interface PendingLimits {
  /** Bytes of structs waiting for what they depend on (kept, but merged again on later updates). */
  maxPendingStructBytes: number;
  /** Bytes of deletions waiting for their content (re-read on every later update). */
  maxPendingDeleteBytes: number;
}

export interface ReplayedDoc {
  ydoc: Y.Doc;
  logCount: number;
  logBytes: number;
}

/** Past this many unreadable updates in one log, a rebuild stops trying them one by one. */
const MAX_REBUILD_ROUNDS = 100;

/**
 * Rebuilds a document from its stored snapshot and update log. The live path refuses updates that
 * cannot be applied, so a log normally replays in one go; one written before that (or damaged)
 * may not. Then the document is rebuilt without the updates that fail, what is left over the
 * pending limits is dropped, the result is written back as the new snapshot and the failing updates
 * are moved to `doc_quarantine` — so the next load is clean and nothing is silently discarded.
 */
export function replayDoc(file: UserFile, name: DocName, limits: PendingLimits, logger: Logger): ReplayedDoc {
  const stored = repo.readDoc(file, name, nowSeconds());
  const ydoc = new Y.Doc();
  try {
    ydoc.transact(() => {
      if (stored.snapshot) Y.applyUpdate(ydoc, stored.snapshot, STORED);
      for (const update of stored.updates) Y.applyUpdate(ydoc, update.data, STORED);
    }, STORED);
    if (withinLimits(ydoc, limits)) return { ydoc, logCount: stored.updates.length, logBytes: stored.logBytes };
  } catch {
    // Rebuilt below, one update at a time.
  }
  ydoc.destroy();
  return rebuild(file, name, stored, limits, logger);
}

function rebuild(file: UserFile, name: DocName, stored: repo.StoredDoc, limits: PendingLimits, logger: Logger): ReplayedDoc {
  const excluded = new Set<number>();
  let skipSnapshot = false;
  let ydoc: Y.Doc;
  for (let round = 0; ; round += 1) {
    ydoc = new Y.Doc();
    const failed = applyAll(ydoc, stored, excluded, skipSnapshot);
    if (failed === null) break;
    ydoc.destroy();
    if (failed === 'snapshot') skipSnapshot = true;
    else if (round < MAX_REBUILD_ROUNDS) excluded.add(failed);
    // Too damaged to sort out one update at a time: keep the snapshot, set the whole log aside.
    else for (const update of stored.updates) excluded.add(update.id);
  }
  const pending = pendingBytes(ydoc);
  const droppedPending = !withinLimits(ydoc, limits);
  if (droppedPending) {
    // Content waiting for updates that never came, beyond what any client needs: let it go.
    ydoc.store.pendingStructs = null;
    ydoc.store.pendingDs = null;
  }
  const now = nowSeconds();
  file.transaction(() => {
    if (skipSnapshot && stored.snapshot) repo.quarantineUpdates(file, name, [stored.snapshot], 'snapshot could not be applied', now);
    const unreadable = stored.updates.filter((u) => excluded.has(u.id)).map((u) => u.data);
    repo.quarantineUpdates(file, name, unreadable, 'could not be applied', now);
    if (droppedPending) {
      const rest = stored.updates.filter((u) => !excluded.has(u.id)).map((u) => u.data);
      repo.quarantineUpdates(file, name, rest, 'left content pending over the limits', now);
    }
    repo.replaceSnapshot(file, name, Y.encodeStateAsUpdate(ydoc));
  });
  logger.error(
    { userId: file.userId, doc: name, unreadable: excluded.size, snapshotLost: skipSnapshot, droppedPending, pending },
    'rebuilt a stored document that did not replay; what failed is kept in doc_quarantine',
  );
  return { ydoc, logCount: 0, logBytes: 0 };
}

/** Applies the snapshot (unless skipped) and every update not excluded; returns what failed first, or null. */
function applyAll(ydoc: Y.Doc, stored: repo.StoredDoc, excluded: Set<number>, skipSnapshot: boolean): 'snapshot' | number | null {
  if (stored.snapshot && !skipSnapshot) {
    try {
      Y.applyUpdate(ydoc, stored.snapshot, STORED);
    } catch {
      return 'snapshot';
    }
  }
  for (const update of stored.updates) {
    if (excluded.has(update.id)) continue;
    try {
      Y.applyUpdate(ydoc, update.data, STORED);
    } catch {
      return update.id;
    }
  }
  return null;
}

function withinLimits(ydoc: Y.Doc, limits: PendingLimits): boolean {
  const pending = pendingBytes(ydoc);
  return pending.structs <= limits.maxPendingStructBytes && pending.deletes <= limits.maxPendingDeleteBytes;
}
