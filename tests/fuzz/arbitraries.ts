import fc from 'fast-check';
import * as Y from 'yjs';
import * as encoding from 'lib0/encoding';
import { TRAVERSAL_KEY } from '../helpers/hostile.ts';
import { MESSAGE_AUTH, MESSAGE_AWARENESS, MESSAGE_QUERY_AWARENESS, MESSAGE_SYNC } from '../../shared/sync-protocol.ts';

/**
 * What hostile clients send, as fast-check arbitraries: Yjs values of every kind a document can
 * carry, documents built from them, updates mutated byte by byte, and frames of every type.
 */

/** A value as it will be written into a Yjs document (plain values through ContentAny, the rest as Y types). */
type ValueSpec =
  | { kind: 'plain'; value: unknown }
  | { kind: 'deep'; depth: number }
  | { kind: 'bytes'; value: Uint8Array }
  | { kind: 'map'; entries: [string, ValueSpec][] }
  | { kind: 'text'; text: string; embed: boolean }
  | { kind: 'array'; items: ValueSpec[] }
  | { kind: 'note'; content: ValueSpec; createdAt: ValueSpec; editedAt: ValueSpec };

const plain: fc.Arbitrary<unknown> = fc.letrec<{ value: unknown }>((tie) => ({
  value: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    fc.string({ maxLength: 20 }),
    fc.integer(),
    fc.double(),
    fc.boolean(),
    fc.constant(null),
    fc.constant(undefined),
    fc.bigInt({ min: -(1n << 63n), max: (1n << 63n) - 1n }),
    fc.array(tie('value'), { maxLength: 4 }),
    fc.dictionary(fc.string({ maxLength: 8 }), tie('value'), { maxKeys: 4 }),
  ),
})).value;

const valueSpec: fc.Arbitrary<ValueSpec> = fc.letrec<{ spec: ValueSpec }>((tie) => ({
  spec: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    fc.record({ kind: fc.constant('plain' as const), value: plain }),
    fc.record({ kind: fc.constant('deep' as const), depth: fc.integer({ min: 20, max: 60 }) }),
    fc.record({ kind: fc.constant('bytes' as const), value: fc.uint8Array({ maxLength: 16 }) }),
    fc.record({ kind: fc.constant('map' as const), entries: fc.array(fc.tuple(fc.string({ maxLength: 8 }), tie('spec')), { maxLength: 3 }) }),
    fc.record({ kind: fc.constant('text' as const), text: fc.string({ maxLength: 30 }), embed: fc.boolean() }),
    fc.record({ kind: fc.constant('array' as const), items: fc.array(tie('spec'), { maxLength: 3 }) }),
    fc.record({ kind: fc.constant('note' as const), content: tie('spec'), createdAt: tie('spec'), editedAt: tie('spec') }),
  ),
})).spec;

/** Keys a client may use: message ids, almost-ids, paths, empty, long, anything. */
const hostileKey = fc.oneof(
  fc.bigInt({ min: 1n, max: (1n << 63n) - 1n }).map(String),
  fc.constantFrom('', '0', '01', TRAVERSAL_KEY, '__proto__', 'constructor', '1'.repeat(26), '9'.repeat(19), 'theme', 'a b', 'x'.repeat(65)),
  fc.string({ maxLength: 24 }),
);

/** One write into a document: a key of a root map (or of another root), set to a value. */
export interface WriteSpec {
  root: string;
  key: string;
  value: ValueSpec;
}

export const writeSpec: fc.Arbitrary<WriteSpec> = fc.record({
  root: fc.oneof({ weight: 8, arbitrary: fc.constantFrom('messages', 'settings') }, { weight: 1, arbitrary: fc.string({ maxLength: 6 }) }),
  key: hostileKey,
  value: valueSpec,
});

/**
 * A generated plain value as Yjs takes it: objects get the usual prototype (fast-check makes them
 * without one, which Yjs refuses to encode); bigint, undefined and the rest stay as they are.
 */
function plainValue(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(plainValue);
  if (typeof value === 'object' && value !== null && !(value instanceof Uint8Array)) {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, plainValue(v)]));
  }
  return value;
}

/** Turns a spec into the Yjs value to store (building Y types where it asks for them). */
function buildValue(spec: ValueSpec): unknown {
  switch (spec.kind) {
    case 'plain':
      return plainValue(spec.value);
    case 'deep': {
      let value: unknown = 'bottom';
      for (let i = 0; i < spec.depth; i += 1) value = [value];
      return value;
    }
    case 'bytes':
      return spec.value;
    case 'map': {
      const map = new Y.Map<unknown>();
      for (const [key, value] of spec.entries) map.set(key, buildValue(value));
      return map;
    }
    case 'text': {
      const text = new Y.Text(spec.text);
      if (spec.embed) text.insertEmbed(0, { image: 'x' });
      return text;
    }
    case 'array': {
      // A Y.Array item must be JSON-like, binary or a Y type; anything else goes inside a plain array.
      const array = new Y.Array<unknown>();
      array.insert(
        0,
        spec.items.map(buildValue).map((item) => (item === undefined || typeof item === 'bigint' ? [item] : item)),
      );
      return array;
    }
    case 'note': {
      const note = new Y.Map<unknown>();
      note.set('content', buildValue(spec.content));
      note.set('created_at', buildValue(spec.createdAt));
      note.set('edited_at', buildValue(spec.editedAt));
      return note;
    }
  }
}

/** A fresh client document holding the given writes; returns its whole state as one update. */
export function updateOf(writes: WriteSpec[], clientId: number): Uint8Array {
  const doc = new Y.Doc();
  doc.clientID = clientId;
  doc.transact(() => {
    for (const write of writes) {
      const map = write.root === 'messages' || write.root === 'settings' || write.root.length % 2 === 0 ? doc.getMap(write.root) : null;
      if (map) map.set(write.key, buildValue(write.value));
      else doc.getText(write.root).insert(0, write.key);
    }
  });
  const update = Y.encodeStateAsUpdate(doc);
  doc.destroy();
  return update;
}

/** A change to the bytes of a valid update. */
type Mutation = { kind: 'set'; at: number; byte: number } | { kind: 'truncate'; at: number } | { kind: 'insert'; at: number; bytes: Uint8Array };

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ kind: fc.constant('set' as const), at: fc.nat(), byte: fc.integer({ min: 0, max: 255 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 4 }) }) },
);

function mutate(update: Uint8Array, mutations: Mutation[]): Uint8Array {
  let bytes = update;
  for (const m of mutations) {
    if (bytes.length === 0) break;
    const at = m.at % bytes.length;
    if (m.kind === 'set') {
      bytes = bytes.slice();
      bytes[at] = m.byte;
    } else if (m.kind === 'truncate') {
      bytes = bytes.slice(0, at);
    } else {
      bytes = new Uint8Array([...bytes.subarray(0, at), ...m.bytes, ...bytes.subarray(at)]);
    }
  }
  return bytes;
}

/** A frame a hostile client sends on the sync channel. */
export type FrameSpec =
  | { kind: 'update'; step: 1 | 2; writes: WriteSpec[]; clientId: number; mutations: Mutation[] }
  | { kind: 'awareness'; entries: [number, number, string][] }
  | { kind: 'typed'; type: number; payload: Uint8Array }
  | { kind: 'raw'; bytes: Uint8Array };

const awarenessState = fc.oneof(fc.json({ maxDepth: 3 }), fc.string({ maxLength: 20 }), fc.constant('null'));

export const frameSpec: fc.Arbitrary<FrameSpec> = fc.oneof(
  {
    weight: 8,
    arbitrary: fc.record({
      kind: fc.constant('update' as const),
      step: fc.constantFrom(1 as const, 2 as const),
      writes: fc.array(writeSpec, { minLength: 1, maxLength: 4 }),
      clientId: fc.integer({ min: 1, max: 2 ** 32 - 1 }),
      mutations: fc.oneof({ weight: 1, arbitrary: fc.constant<Mutation[]>([]) }, { weight: 3, arbitrary: fc.array(mutation, { minLength: 1, maxLength: 3 }) }),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant('awareness' as const),
      entries: fc.array(fc.tuple(fc.nat(), fc.nat(), awarenessState), { maxLength: 6 }),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant('typed' as const),
      type: fc.constantFrom(MESSAGE_SYNC, MESSAGE_AWARENESS, MESSAGE_AUTH, MESSAGE_QUERY_AWARENESS, 100, 7, 200),
      payload: fc.uint8Array({ maxLength: 40 }),
    }),
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('raw' as const), bytes: fc.uint8Array({ minLength: 1, maxLength: 64 }) }) },
);

/** The bytes of a frame spec. */
export function encodeFrame(spec: FrameSpec): Uint8Array {
  const e = encoding.createEncoder();
  switch (spec.kind) {
    case 'update':
      encoding.writeVarUint(e, MESSAGE_SYNC);
      encoding.writeVarUint(e, spec.step);
      encoding.writeVarUint8Array(e, mutate(updateOf(spec.writes, spec.clientId), spec.mutations));
      break;
    case 'awareness': {
      const inner = encoding.createEncoder();
      encoding.writeVarUint(inner, spec.entries.length);
      for (const [id, clock, json] of spec.entries) {
        encoding.writeVarUint(inner, id);
        encoding.writeVarUint(inner, clock);
        encoding.writeVarString(inner, json);
      }
      encoding.writeVarUint(e, MESSAGE_AWARENESS);
      encoding.writeVarUint8Array(e, encoding.toUint8Array(inner));
      break;
    }
    case 'typed':
      encoding.writeVarUint(e, spec.type);
      encoding.writeUint8Array(e, spec.payload);
      break;
    case 'raw':
      encoding.writeUint8Array(e, spec.bytes);
      break;
  }
  return encoding.toUint8Array(e);
}
