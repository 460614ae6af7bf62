import * as decoding from 'lib0/decoding';
import * as encoding from 'lib0/encoding';

/**
 * What nodes tell each other (over their links, or Redis pub/sub for all), one binary message
 * each (lib0's varint codec, as the sync protocol): a message is encoded once and its payload
 * bytes are never re-encoded.
 *
 * - `http-request`/`http-answer`: a REST request for a user another node owns, and its answer.
 * - `sync-open`/`sync-frame`/`sync-close`: a device's sync socket held by an edge node, relayed to
 *   the owner of its document: opened (with the document as the device named it, which the owner
 *   checks), each frame as it came, closed.
 * - `sync-send`/`sync-end`: the owner's answer to one such socket, and its close code.
 * - `sync-publish`: a frame for every socket of a document on the edge node, encoded once per node
 *   (`except`: the socket that sent it, which must not get it back; '' for none).
 * - `sessions-ended`: sessions that ended on one node (logout, password change), for every node.
 * - `files-changed`: a process that is no node (an admin command) changed user files: every node
 *   looks at once at what it keeps over them, instead of at its next poll.
 * - `release-user`: an admin command (`from`, its holder name) asks the node that owns the user
 *   to hand them over to it, for `leaseMs` (then it renews the lease itself).
 * - `user-released`: the node did (for the command `to`, which waits for it).
 */
export type NodeMessage =
  | { kind: 'http-request'; id: number; from: string; request: string; body: Uint8Array }
  | { kind: 'http-answer'; id: number; answer: string; body: Uint8Array }
  | { kind: 'sync-open'; conn: string; from: string; userId: string; sessionId: string; docParam: string; ack: boolean }
  | { kind: 'sync-frame'; conn: string; bytes: Uint8Array }
  | { kind: 'sync-close'; conn: string }
  | { kind: 'sync-send'; conn: string; bytes: Uint8Array }
  | { kind: 'sync-end'; conn: string; code: number; reason: string }
  | { kind: 'sync-publish'; doc: string; except: string; bytes: Uint8Array }
  | { kind: 'sessions-ended'; from: string; sessionIds: string[] }
  | { kind: 'files-changed'; from: string }
  | { kind: 'release-user'; from: string; userId: string; leaseMs: number }
  | { kind: 'user-released'; userId: string; to: string };

// Appended to, never reordered: a message's kind is its index here.
const KINDS = [
  'http-request',
  'http-answer',
  'sync-open',
  'sync-frame',
  'sync-close',
  'sync-send',
  'sync-end',
  'sync-publish',
  'sessions-ended',
  'files-changed',
  'release-user',
  'user-released',
] as const;

export class MalformedNodeMessage extends Error {}

const KIND_NUMBERS = Object.fromEntries(KINDS.map((kind, index) => [kind, index])) as Record<NodeMessage['kind'], number>;

/** Appends one message to `e`; messages are self-delimiting, so a batch is messages one after another. */
export function writeNodeMessage(e: encoding.Encoder, message: NodeMessage): void {
  encoding.writeVarUint(e, KIND_NUMBERS[message.kind]);
  switch (message.kind) {
    case 'http-request':
      encoding.writeVarUint(e, message.id);
      encoding.writeVarString(e, message.from);
      encoding.writeVarString(e, message.request);
      encoding.writeVarUint8Array(e, message.body);
      break;
    case 'http-answer':
      encoding.writeVarUint(e, message.id);
      encoding.writeVarString(e, message.answer);
      encoding.writeVarUint8Array(e, message.body);
      break;
    case 'sync-open':
      encoding.writeVarString(e, message.conn);
      encoding.writeVarString(e, message.from);
      encoding.writeVarString(e, message.userId);
      encoding.writeVarString(e, message.sessionId);
      encoding.writeVarString(e, message.docParam);
      encoding.writeUint8(e, message.ack ? 1 : 0);
      break;
    case 'sync-frame':
    case 'sync-send':
      encoding.writeVarString(e, message.conn);
      encoding.writeVarUint8Array(e, message.bytes);
      break;
    case 'sync-close':
      encoding.writeVarString(e, message.conn);
      break;
    case 'sync-end':
      encoding.writeVarString(e, message.conn);
      encoding.writeVarUint(e, message.code);
      encoding.writeVarString(e, message.reason);
      break;
    case 'sync-publish':
      encoding.writeVarString(e, message.doc);
      encoding.writeVarString(e, message.except);
      encoding.writeVarUint8Array(e, message.bytes);
      break;
    case 'sessions-ended':
      encoding.writeVarString(e, message.from);
      encoding.writeVarUint(e, message.sessionIds.length);
      for (const id of message.sessionIds) encoding.writeVarString(e, id);
      break;
    case 'files-changed':
      encoding.writeVarString(e, message.from);
      break;
    case 'release-user':
      encoding.writeVarString(e, message.from);
      encoding.writeVarString(e, message.userId);
      encoding.writeVarUint(e, message.leaseMs);
      break;
    case 'user-released':
      encoding.writeVarString(e, message.userId);
      encoding.writeVarString(e, message.to);
      break;
  }
}

/**
 * Reads the messages of one batch (payloads are views into `bytes`); throws MalformedNodeMessage
 * for anything else (another version's node, a stray publisher).
 */
export function decodeNodeMessages(bytes: Uint8Array): NodeMessage[] {
  const d = decoding.createDecoder(bytes);
  const messages: NodeMessage[] = [];
  try {
    while (decoding.hasContent(d)) messages.push(readNodeMessage(d));
  } catch (error) {
    if (error instanceof MalformedNodeMessage) throw error;
    throw new MalformedNodeMessage(error instanceof Error ? error.message : String(error));
  }
  return messages;
}

function readNodeMessage(d: decoding.Decoder): NodeMessage {
  const kind = KINDS[decoding.readVarUint(d)];
  switch (kind) {
    case 'http-request':
      return { kind, id: decoding.readVarUint(d), from: decoding.readVarString(d), request: decoding.readVarString(d), body: decoding.readVarUint8Array(d) };
    case 'http-answer':
      return { kind, id: decoding.readVarUint(d), answer: decoding.readVarString(d), body: decoding.readVarUint8Array(d) };
    case 'sync-open':
      return {
        kind,
        conn: decoding.readVarString(d),
        from: decoding.readVarString(d),
        userId: decoding.readVarString(d),
        sessionId: decoding.readVarString(d),
        docParam: decoding.readVarString(d),
        ack: decoding.readUint8(d) === 1,
      };
    case 'sync-frame':
    case 'sync-send':
      return { kind, conn: decoding.readVarString(d), bytes: decoding.readVarUint8Array(d) };
    case 'sync-close':
      return { kind, conn: decoding.readVarString(d) };
    case 'sync-end':
      return { kind, conn: decoding.readVarString(d), code: decoding.readVarUint(d), reason: decoding.readVarString(d) };
    case 'sync-publish':
      return { kind, doc: decoding.readVarString(d), except: decoding.readVarString(d), bytes: decoding.readVarUint8Array(d) };
    case 'sessions-ended': {
      const from = decoding.readVarString(d);
      const count = decoding.readVarUint(d);
      const sessionIds: string[] = [];
      for (let i = 0; i < count; i += 1) sessionIds.push(decoding.readVarString(d));
      return { kind, from, sessionIds };
    }
    case 'files-changed':
      return { kind, from: decoding.readVarString(d) };
    case 'release-user':
      return { kind, from: decoding.readVarString(d), userId: decoding.readVarString(d), leaseMs: decoding.readVarUint(d) };
    case 'user-released':
      return { kind, userId: decoding.readVarString(d), to: decoding.readVarString(d) };
    default:
      throw new MalformedNodeMessage('unknown message kind');
  }
}
