import * as decoding from 'lib0/decoding';
import * as encoding from 'lib0/encoding';
import * as syncProtocol from 'y-protocols/sync';
import type * as Y from 'yjs';
import { MESSAGE_ACK, MESSAGE_AUTH, MESSAGE_AWARENESS, MESSAGE_QUERY_AWARENESS, MESSAGE_SYNC } from './sync-protocol.ts';

/**
 * The one codec of the sync channel, for the server, client-lib and the tests. The sync steps are
 * written by y-protocols (`writeSyncStep1`, `writeSyncStep2`, `writeUpdate`) and read by its
 * message constants; only the framing of our acknowledgement is ours.
 */
export type SyncMessage =
  | { type: 'sync-step1'; stateVector: Uint8Array }
  | { type: 'sync-step2'; update: Uint8Array }
  | { type: 'sync-update'; update: Uint8Array }
  | { type: 'awareness'; update: Uint8Array }
  | { type: 'query-awareness' }
  | { type: 'auth' }
  | { type: 'ack'; count: number }
  /** A message type this codec does not know (a newer peer's extension): the payload is skipped. */
  | { type: 'unknown'; messageType: number };

export class MalformedMessageError extends Error {}

/**
 * Splits one frame into what it carries, without applying or decoding the payload any further.
 * Payloads are views into `bytes`. A known message that is not whole — an unknown sync step, a
 * length that runs past the frame, bytes after the message — throws MalformedMessageError; an
 * unknown message type is returned as such, for the receiver to refuse or ignore.
 */
export function readMessage(bytes: Uint8Array): SyncMessage {
  const decoder = decoding.createDecoder(bytes);
  let message: SyncMessage;
  try {
    message = readBody(decoder, decoding.readVarUint(decoder));
  } catch (error) {
    if (error instanceof MalformedMessageError) throw error;
    throw new MalformedMessageError(error instanceof Error ? error.message : String(error));
  }
  if (decoding.hasContent(decoder)) throw new MalformedMessageError('bytes after the end of the message');
  return message;
}

function readBody(decoder: decoding.Decoder, type: number): SyncMessage {
  switch (type) {
    case MESSAGE_SYNC: {
      const step = decoding.readVarUint(decoder);
      const payload = decoding.readVarUint8Array(decoder);
      if (step === syncProtocol.messageYjsSyncStep1) return { type: 'sync-step1', stateVector: payload };
      if (step === syncProtocol.messageYjsSyncStep2) return { type: 'sync-step2', update: payload };
      if (step === syncProtocol.messageYjsUpdate) return { type: 'sync-update', update: payload };
      throw new MalformedMessageError(`unknown sync step ${step}`);
    }
    case MESSAGE_AWARENESS:
      return { type: 'awareness', update: decoding.readVarUint8Array(decoder) };
    case MESSAGE_QUERY_AWARENESS:
      return { type: 'query-awareness' };
    case MESSAGE_AUTH:
      // y-protocols/auth: a permission flag and a reason. A server sends it; one from a client means nothing.
      decoding.readVarUint(decoder);
      decoding.readVarString(decoder);
      return { type: 'auth' };
    case MESSAGE_ACK:
      return { type: 'ack', count: decoding.readVarUint(decoder) };
    default:
      decoder.pos = decoder.arr.length;
      return { type: 'unknown', messageType: type };
  }
}

function frame(type: number, write: (encoder: encoding.Encoder) => void): Uint8Array {
  const encoder = encoding.createEncoder();
  encoding.writeVarUint(encoder, type);
  write(encoder);
  return encoding.toUint8Array(encoder);
}

/** Our state vector: the peer answers with what we lack. */
export function encodeSyncStep1(doc: Y.Doc): Uint8Array {
  return frame(MESSAGE_SYNC, (encoder) => syncProtocol.writeSyncStep1(encoder, doc));
}

/** Only what the peer's state vector says it lacks. Throws if `stateVector` is not one. */
export function encodeSyncStep2(doc: Y.Doc, stateVector: Uint8Array): Uint8Array {
  return frame(MESSAGE_SYNC, (encoder) => syncProtocol.writeSyncStep2(encoder, doc, stateVector));
}

export function encodeUpdate(update: Uint8Array): Uint8Array {
  return frame(MESSAGE_SYNC, (encoder) => syncProtocol.writeUpdate(encoder, update));
}

/** `update` is an encoded awareness update (`y-protocols/awareness`). */
export function encodeAwareness(update: Uint8Array): Uint8Array {
  return frame(MESSAGE_AWARENESS, (encoder) => encoding.writeVarUint8Array(encoder, update));
}

export function encodeQueryAwareness(): Uint8Array {
  return frame(MESSAGE_QUERY_AWARENESS, () => {});
}

export function encodeAck(count: number): Uint8Array {
  return frame(MESSAGE_ACK, (encoder) => encoding.writeVarUint(encoder, count));
}
