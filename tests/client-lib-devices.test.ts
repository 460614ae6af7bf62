import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { once } from 'node:events';
import WebSocket from 'ws';
import fc from 'fast-check';
import { MemoryStore, PlexichatClient, openFileStore, type Notes } from '../client-lib/index.ts';
import { Api, registerUser, spawnServer, tempDir, type ServerProcess } from './helpers/server.ts';
import { TEST_BACKOFF, converged } from './helpers/client.ts';

type Op =
  | { kind: 'add'; device: number }
  | { kind: 'append'; device: number; pick: number; atStart: boolean }
  | { kind: 'remove'; device: number; pick: number }
  | { kind: 'disconnect'; device: number }
  | { kind: 'connect'; device: number }
  | { kind: 'restart'; device: number }
  | { kind: 'settle'; device: number }
  | { kind: 'kill' };

const DEVICES = 3;
const STEPS = 240;
const SEED = 20_261_130;

const device = fc.integer({ min: 0, max: DEVICES - 1 });
const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 6, arbitrary: device.map((d) => ({ kind: 'add' as const, device: d })) },
  { weight: 12, arbitrary: fc.record({ kind: fc.constant('append' as const), device, pick: fc.nat(1_000), atStart: fc.boolean() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('remove' as const), device, pick: fc.nat(1_000) }) },
  { weight: 2, arbitrary: device.map((d) => ({ kind: 'disconnect' as const, device: d })) },
  { weight: 3, arbitrary: device.map((d) => ({ kind: 'connect' as const, device: d })) },
  { weight: 2, arbitrary: device.map((d) => ({ kind: 'restart' as const, device: d })) },
  { weight: 2, arbitrary: device.map((d) => ({ kind: 'settle' as const, device: d })) },
);

/** Lets sockets deliver what is queued, without waiting for any particular time. */
const tick = () => new Promise<void>((resolve) => setImmediate(resolve));

test('three devices, a seeded random schedule of edits, disconnects, restarts and a server kill -9 converge with nothing lost', async () => {
  const [generated] = fc.sample(fc.array(opArb, { minLength: STEPS, maxLength: STEPS }), { seed: SEED, numRuns: 1 });
  assert.ok(generated);
  // The server dies mid-schedule (kill -9) and comes back on the same data.
  const schedule: Op[] = [...generated.slice(0, STEPS / 2), { kind: 'kill' }, ...generated.slice(STEPS / 2)];
  assert.ok(schedule.length > 200);

  const dir = tempDir('plexichat-devices-');
  const serverDir = path.join(dir, 'server');
  fs.mkdirSync(serverDir);
  const start = () => spawnServer(['--port', '0', '--data-dir', serverDir, '--log-level', 'warn']);
  let server: ServerProcess = await start();
  const clients: PlexichatClient[] = [];
  const handles: (Notes | null)[] = [];
  try {
    const user = await registerUser(new Api(server.url));
    const storePath = (d: number) => path.join(dir, `device-${d}.sqlite`);
    const openDevice = async (d: number) =>
      clients[d]!.openNotes({ store: await openFileStore(storePath(d), { maxRecords: 40 }), WebSocket, backoff: TEST_BACKOFF });
    for (let d = 0; d < DEVICES; d += 1) {
      clients.push(new PlexichatClient({ baseUrl: server.url, token: user.token }));
      handles.push(await openDevice(d));
    }
    const online = [true, true, true];

    // What must be there at the end: every token ever typed, in its note, unless that note was removed.
    const tokenNote = new Map<string, string>();
    const removed = new Set<string>();
    const acknowledged = new Set<string>();
    let counter = 0;
    const notes = (d: number) => handles[d]!;

    for (const op of schedule) {
      switch (op.kind) {
        case 'add': {
          counter += 1;
          const token = `t${counter}`;
          tokenNote.set(token, notes(op.device).add(token));
          break;
        }
        case 'append': {
          const list = notes(op.device)
            .list()
            .filter((n) => !removed.has(n.id));
          const target = list[op.pick % Math.max(list.length, 1)];
          counter += 1;
          const token = `t${counter}`;
          if (!target) {
            tokenNote.set(token, notes(op.device).add(token));
            break;
          }
          notes(op.device).edit(target.id, (text) => (op.atStart ? text.insert(0, `${token} `) : text.insert(text.length, ` ${token}`)));
          tokenNote.set(token, target.id);
          break;
        }
        case 'remove': {
          const list = notes(op.device).list();
          const target = list[op.pick % Math.max(list.length, 1)];
          if (target) {
            removed.add(target.id);
            notes(op.device).remove(target.id);
          }
          break;
        }
        case 'disconnect':
          notes(op.device).disconnect();
          online[op.device] = false;
          break;
        case 'connect':
          notes(op.device).connect();
          online[op.device] = true;
          break;
        case 'restart':
          // The app quits and starts again from its store, as it was (online or not).
          await notes(op.device).close();
          handles[op.device] = null;
          handles[op.device] = await clients[op.device]!.openNotes({
            store: await openFileStore(storePath(op.device), { maxRecords: 40 }),
            WebSocket,
            backoff: TEST_BACKOFF,
            connect: online[op.device],
          });
          break;
        case 'settle':
          if (online[op.device]) {
            await notes(op.device).whenSynced();
            // Everything this device typed so far is now stored on the server.
            for (const [token, id] of tokenNote) if (notes(op.device).get(id)?.content.includes(token)) acknowledged.add(token);
          }
          break;
        case 'kill': {
          server.child.kill('SIGKILL');
          await once(server.child, 'exit');
          server = await start();
          for (const client of clients) client.setBaseUrl(server.url);
          break;
        }
      }
      await tick();
    }

    // Everyone back online; every device's edits reach the server.
    for (let d = 0; d < DEVICES; d += 1) if (!online[d]) notes(d).connect();
    await Promise.all(handles.map((h) => h!.whenSynced()));
    const freshClient = new PlexichatClient({ baseUrl: server.url, token: user.token });
    const fresh = await freshClient.openNotes({ store: new MemoryStore(), WebSocket, backoff: TEST_BACKOFF });
    try {
      await fresh.whenSynced();
      await converged([...handles.map((h) => h!), fresh]);
      const final = new Map(fresh.list().map((n) => [n.id, n.content]));
      for (const [token, id] of tokenNote) {
        if (removed.has(id)) {
          assert.equal(final.has(id), false, `note ${id} was removed`);
          continue;
        }
        assert.ok(
          final.get(id)?.split(' ').includes(token),
          `${token} is missing from note ${id}${acknowledged.has(token) ? ' (it had been acknowledged)' : ''}`,
        );
      }
      assert.ok(tokenNote.size > 100, `${tokenNote.size} edits made`);
      assert.ok(acknowledged.size > 0, 'some edits were acknowledged before the end');
      // REST reads the same document the devices converged on.
      const rest = await freshClient.listMessages(fresh.channelId, { limit: 100 });
      assert.deepEqual(
        rest.map((m) => [m.id, m.content]),
        fresh
          .list()
          .slice(0, 100)
          .map((n) => [n.id, n.content]),
      );
    } finally {
      await fresh.close();
    }
  } finally {
    await Promise.all(handles.map((h) => h?.close()));
    server.child.kill('SIGTERM');
    if (server.child.exitCode === null) await once(server.child, 'exit');
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
