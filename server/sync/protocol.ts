import * as encoding from 'lib0/encoding';
import * as decoding from 'lib0/decoding';
import * as Y from 'yjs';
import * as awarenessProtocol from 'y-protocols/awareness';
import { MESSAGE_ACK, MESSAGE_AWARENESS, MESSAGE_SYNC, SYNC_STEP1, SYNC_STEP2, SYNC_UPDATE } from '../../shared/sync-protocol.ts';

/** What one incoming frame asks for, read without applying anything. */
export type IncomingMessage =
  | { kind: 'step1'; stateVector: Uint8Array }
  | { kind: 'update'; update: Uint8Array; isStep2: boolean }
  | { kind: 'awareness'; update: Uint8Array }
  | { kind: 'query-awareness' }
  | { kind: 'auth' };

export class MalformedMessageError extends Error {}

/**
 * Decodes a frame. Updates are fully decoded here (structs and delete set), so one that cannot be
 * read is refused before it is stored or applied. Throws MalformedMessageError.
 */
export function readIncomingMessage(bytes: Uint8Array): IncomingMessage {
  try {
    const decoder = decoding.createDecoder(bytes);
    const type = decoding.readVarUint(decoder);
    switch (type) {
      case MESSAGE_SYNC: {
        const step = decoding.readVarUint(decoder);
        const payload = decoding.readVarUint8Array(decoder);
        if (step === SYNC_STEP1) {
          Y.decodeStateVector(payload);
          return { kind: 'step1', stateVector: payload };
        }
        if (step === SYNC_STEP2 || step === SYNC_UPDATE) {
          Y.decodeUpdate(payload);
          return { kind: 'update', update: payload, isStep2: step === SYNC_STEP2 };
        }
        throw new MalformedMessageError(`unknown sync step ${step}`);
      }
      case MESSAGE_AWARENESS:
        return { kind: 'awareness', update: decoding.readVarUint8Array(decoder) };
      case 3:
        return { kind: 'query-awareness' };
      case 2:
        return { kind: 'auth' };
      default:
        throw new MalformedMessageError(`unknown message type ${type}`);
    }
  } catch (error) {
    if (error instanceof MalformedMessageError) throw error;
    throw new MalformedMessageError(error instanceof Error ? error.message : String(error));
  }
}

/** An empty Yjs update (no structs, no deletions): nothing to store or relay. */
export function isEmptyUpdate(update: Uint8Array): boolean {
  return update.byteLength === 2 && update[0] === 0 && update[1] === 0;
}

/** `[MESSAGE_SYNC, step, payload]`: the frame all three sync messages share. */
function encodeSyncFrame(step: number, payload: Uint8Array): Uint8Array {
  const encoder = encoding.createEncoder();
  encoding.writeVarUint(encoder, MESSAGE_SYNC);
  encoding.writeVarUint(encoder, step);
  encoding.writeVarUint8Array(encoder, payload);
  return encoding.toUint8Array(encoder);
}

export function encodeSyncStep1(doc: Y.Doc): Uint8Array {
  return encodeSyncFrame(SYNC_STEP1, Y.encodeStateVector(doc));
}

/** Step 2: only what the peer's state vector says it lacks. */
export function encodeSyncStep2(doc: Y.Doc, stateVector: Uint8Array): Uint8Array {
  return encodeSyncFrame(SYNC_STEP2, Y.encodeStateAsUpdate(doc, stateVector));
}

export function encodeUpdateMessage(update: Uint8Array): Uint8Array {
  return encodeSyncFrame(SYNC_UPDATE, update);
}

export function encodeAwarenessMessage(awareness: awarenessProtocol.Awareness, clients: number[]): Uint8Array {
  const encoder = encoding.createEncoder();
  encoding.writeVarUint(encoder, MESSAGE_AWARENESS);
  encoding.writeVarUint8Array(encoder, awarenessProtocol.encodeAwarenessUpdate(awareness, clients));
  return encoding.toUint8Array(encoder);
}

export function encodeAck(count: number): Uint8Array {
  const encoder = encoding.createEncoder();
  encoding.writeVarUint(encoder, MESSAGE_ACK);
  encoding.writeVarUint(encoder, count);
  return encoding.toUint8Array(encoder);
}
