import * as decoding from 'lib0/decoding';
import * as encoding from 'lib0/encoding';
import { CLOSE_CODES } from '../../shared/sync-protocol.ts';

export interface AwarenessLimits {
  /** Bytes of JSON one awareness state may hold (a cursor and a name need a few hundred). */
  maxStateBytes: number;
  /** Awareness client ids one connection may hold states for (a client has one). */
  maxStatesPerConnection: number;
  /** JSON bytes of all the states of one document together. */
  maxDocumentStateBytes: number;
}

/** Why an awareness message was refused, with the close code that says so. */
export class AwarenessRefused extends Error {
  constructor(
    readonly closeCode: number,
    message: string,
  ) {
    super(message);
  }
}

interface Entry {
  clock: number;
  /** The state as the client's JSON text: relayed as it came, never re-serialised. */
  json: string;
  owner: object;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * Awareness (presence, cursors) of one document, relayed between its connections with the
 * y-protocols awareness encoding and its rules (a higher clock wins; `null` removes). Ours rather
 * than y-protocols' `Awareness` class because the server must bound it: every state is size-capped
 * and counted against the connection that set it (and dropped when that connection closes), the
 * JSON is kept as text instead of parsed objects, and no timer runs per document.
 */
export class AwarenessRelay {
  private readonly entries = new Map<number, Entry>();
  /** JSON bytes held, over all entries (UTF-16 length: cheap, and within 3× of the bytes). */
  private heldLength = 0;

  constructor(private readonly limits: AwarenessLimits) {}

  get size(): number {
    return this.entries.size;
  }

  /**
   * Applies an awareness update sent by `owner`. Returns the update to relay (only the entries
   * that changed), or null when nothing changed. Throws AwarenessRefused, changing nothing, for a
   * malformed update or one over the limits.
   */
  apply(update: Uint8Array, owner: object): Uint8Array | null {
    const incoming = this.decode(update);
    const held = new Set<number>();
    for (const [id, entry] of this.entries) if (entry.owner === owner) held.add(id);
    for (const { id, json } of incoming) {
      if (json === 'null') held.delete(id);
      else held.add(id);
    }
    if (held.size > this.limits.maxStatesPerConnection) {
      throw new AwarenessRefused(CLOSE_CODES.MALFORMED_MESSAGE, `a connection may hold at most ${this.limits.maxStatesPerConnection} awareness states`);
    }
    let length = this.heldLength;
    for (const { id, json } of incoming) length += json.length - (this.entries.get(id)?.json.length ?? 0);
    if (length > this.limits.maxDocumentStateBytes) {
      throw new AwarenessRefused(CLOSE_CODES.MESSAGE_TOO_BIG, `the awareness states of a document may hold at most ${this.limits.maxDocumentStateBytes} bytes`);
    }
    const changed: { id: number; clock: number; json: string }[] = [];
    for (const { id, clock, json } of incoming) {
      const current = this.entries.get(id);
      const currentClock = current?.clock ?? 0;
      // y-protocols' rule: a newer clock wins; at the same clock only a removal of a known state does.
      if (!(currentClock < clock || (currentClock === clock && json === 'null' && current !== undefined))) continue;
      this.heldLength -= current?.json.length ?? 0;
      if (json === 'null') {
        this.entries.delete(id);
      } else {
        this.entries.set(id, { clock, json, owner });
        this.heldLength += json.length;
      }
      changed.push({ id, clock, json });
    }
    return changed.length === 0 ? null : encodeEntries(changed);
  }

  /** Every state held now, for a connection that just arrived or asked; null when there is none. */
  encodeAll(): Uint8Array | null {
    if (this.entries.size === 0) return null;
    return encodeEntries([...this.entries].map(([id, entry]) => ({ id, clock: entry.clock, json: entry.json })));
  }

  /** Drops every state `owner` set (its connection closed); returns the removal to relay, or null. */
  removeOwner(owner: object): Uint8Array | null {
    const removed: { id: number; clock: number; json: string }[] = [];
    for (const [id, entry] of this.entries) {
      if (entry.owner !== owner) continue;
      this.entries.delete(id);
      this.heldLength -= entry.json.length;
      removed.push({ id, clock: entry.clock + 1, json: 'null' });
    }
    return removed.length === 0 ? null : encodeEntries(removed);
  }

  private decode(update: Uint8Array): { id: number; clock: number; json: string }[] {
    const out: { id: number; clock: number; json: string }[] = [];
    try {
      const decoder = decoding.createDecoder(update);
      const count = decoding.readVarUint(decoder);
      if (count > this.limits.maxStatesPerConnection) {
        throw new AwarenessRefused(CLOSE_CODES.MALFORMED_MESSAGE, `an awareness update may carry at most ${this.limits.maxStatesPerConnection} states`);
      }
      for (let i = 0; i < count; i += 1) {
        const id = decoding.readVarUint(decoder);
        const clock = decoding.readVarUint(decoder);
        const bytes = decoding.readVarUint8Array(decoder);
        if (bytes.byteLength > this.limits.maxStateBytes) {
          throw new AwarenessRefused(CLOSE_CODES.MESSAGE_TOO_BIG, `an awareness state may hold at most ${this.limits.maxStateBytes} bytes`);
        }
        const json = utf8.decode(bytes);
        // Parsed only to refuse what is not JSON: every receiving client parses it.
        JSON.parse(json);
        out.push({ id, clock, json });
      }
      if (decoding.hasContent(decoder)) throw new Error('bytes after the last state');
    } catch (error) {
      if (error instanceof AwarenessRefused) throw error;
      throw new AwarenessRefused(CLOSE_CODES.MALFORMED_MESSAGE, `malformed awareness update (${error instanceof Error ? error.message : String(error)})`);
    }
    return out;
  }
}

function encodeEntries(entries: { id: number; clock: number; json: string }[]): Uint8Array {
  const encoder = encoding.createEncoder();
  encoding.writeVarUint(encoder, entries.length);
  for (const { id, clock, json } of entries) {
    encoding.writeVarUint(encoder, id);
    encoding.writeVarUint(encoder, clock);
    encoding.writeVarString(encoder, json);
  }
  return encoding.toUint8Array(encoder);
}
