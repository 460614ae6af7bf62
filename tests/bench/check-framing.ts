/**
 * `node --import tsx tests/bench/check-framing.ts`: cross-checks the bench's lean client against
 * the stock @hocuspocus/provider on the Hocuspocus baseline, in both directions, so that the
 * Hocuspocus framing in client.ts is known to be what Hocuspocus' own clients speak.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { HocuspocusProvider, HocuspocusProviderWebsocket } from '@hocuspocus/provider';
import WebSocket from 'ws';
import * as Y from 'yjs';
import { NOTE_ID, SyncClient } from './client.ts';
import { buildForBench } from './build.ts';
import { serverEntries } from './servers.ts';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const entry = serverEntries(await buildForBench(repoRoot), process.env).find((candidate) => candidate.name === 'hocuspocus+sqlite');
if (entry?.syncDocs === undefined) throw new Error('no Hocuspocus entry');
const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'plexichat-bench-check-'));
const server = await entry.start(dataDir);
const stockDoc = new Y.Doc();
let provider: HocuspocusProvider | undefined;
let socket: HocuspocusProviderWebsocket | undefined;
let lean: SyncClient | undefined;
try {
  const docs = await entry.syncDocs(server, 1);
  if ('skip' in docs) throw new Error(docs.skip);
  const endpoint = docs.endpoints[0]!;
  lean = await SyncClient.connect(endpoint);
  lean.createNote('written by the lean client');
  await lean.roundTrip();

  // Node 20 has no global WebSocket: the provider's socket takes `ws` instead.
  socket = new HocuspocusProviderWebsocket({ url: `ws://127.0.0.1:${server.port}`, WebSocketPolyfill: WebSocket });
  const synced = new Promise<void>((resolve) => {
    provider = new HocuspocusProvider({
      websocketProvider: socket!,
      name: endpoint.docName,
      document: stockDoc,
      token: 'benchmark',
      onSynced: () => resolve(),
    });
    provider.attach();
  });
  await synced;
  const stockContent = stockDoc.getMap<Y.Map<unknown>>('messages').get(NOTE_ID)?.get('content');
  if (!(stockContent instanceof Y.Text) || stockContent.toString() !== 'written by the lean client') {
    throw new Error('the stock provider did not receive what the lean client wrote');
  }
  const expected = 'written by the lean client, then by the stock provider';
  const received = new Promise<void>((resolve) => {
    lean!.onSync = () => {
      if (lean!.content()?.toString() === expected) resolve();
    };
  });
  stockContent.insert(stockContent.length, ', then by the stock provider');
  await Promise.race([
    received,
    new Promise((_, reject) => setTimeout(() => reject(new Error('the lean client did not receive the stock provider’s edit')), 10_000)),
  ]);
  process.stdout.write('ok: the lean client and @hocuspocus/provider interoperate through Hocuspocus\n');
} finally {
  provider?.destroy();
  socket?.destroy();
  lean?.close();
  await server.stop();
  fs.rmSync(dataDir, { recursive: true, force: true });
}
process.exit(0);
