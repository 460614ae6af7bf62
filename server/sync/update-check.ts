import * as Y from 'yjs';

/** An update as `Y.decodeUpdate` reads it. */
export type DecodedUpdate = ReturnType<typeof Y.decodeUpdate>;

export interface UpdateCheckLimits {
  /** Deleted ranges an update may name beyond what the document (and the update) hold. */
  maxUnknownDeleteRanges: number;
}

/**
 * Why an update must not reach the document, judged from its decoded form before anything is
 * applied, or null. These are the shapes that get past `Y.decodeUpdate` but make Yjs throw half-way
 * through applying (leaving the document part-changed), multiply memory, or leave work behind that
 * every later update pays for:
 * - an item whose origin, right origin or parent is a later item of its own client (Yjs looks the
 *   reference up before that item exists and throws);
 * - a subdocument (our documents have none; each would be a whole Y.Doc in server memory);
 * - deletions of ranges nobody has: Yjs keeps them pending and re-reads all of them on every later
 *   update of the document, so a few kilobytes of them can stall the event loop for seconds.
 */
export function checkUpdate(update: DecodedUpdate, stateOf: (client: number) => number, limits: UpdateCheckLimits): string | null {
  /** Per client: the clock right after this update's structs, when they follow on what the document has. */
  const reach = new Map<number, number>();
  for (const struct of update.structs) {
    const { client, clock } = struct.id;
    const start = reach.get(client);
    if (start === undefined ? clock <= stateOf(client) : true) reach.set(client, clock + struct.length);
    if (!(struct instanceof Y.Item)) continue;
    if (struct.content instanceof Y.ContentDoc) return 'subdocuments are not allowed';
    if (isLaterOwnItem(struct.origin, client, clock) || isLaterOwnItem(struct.rightOrigin, client, clock)) {
      return 'an item refers to a later item of its own client';
    }
    if (struct.parent instanceof Y.ID && isLaterOwnItem(struct.parent, client, clock)) {
      return 'an item names a later item of its own client as its parent';
    }
  }
  let unknown = 0;
  for (const [client, deletes] of update.ds.clients) {
    const known = Math.max(stateOf(client), reach.get(client) ?? 0);
    for (const range of deletes) {
      if (range.clock + range.len > known) unknown += 1;
    }
    if (unknown > limits.maxUnknownDeleteRanges) {
      return `the update deletes more than ${limits.maxUnknownDeleteRanges} ranges of content the document does not have`;
    }
  }
  return null;
}

function isLaterOwnItem(ref: Y.ID | null, client: number, clock: number): boolean {
  return ref !== null && ref.client === client && ref.clock >= clock;
}

/** Bytes of content Yjs holds back until what it depends on arrives (re-read by later updates). */
export function pendingBytes(doc: Y.Doc): { structs: number; deletes: number } {
  return {
    structs: doc.store.pendingStructs?.update.byteLength ?? 0,
    deletes: doc.store.pendingDs?.byteLength ?? 0,
  };
}
