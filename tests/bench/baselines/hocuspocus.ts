/**
 * Baseline: Hocuspocus 4 with its SQLite extension and default settings (debounced stores of the
 * merged document). Its own SIGTERM handler flushes pending stores before exiting.
 */
import path from 'node:path';
import { Server } from '@hocuspocus/server';
import { SQLite } from '@hocuspocus/extension-sqlite';
import { announce, baselineArgs } from './args.ts';

const { port, dataDir } = baselineArgs();
if (dataDir === undefined) throw new Error('--data-dir is required');
const server = new Server({
  port,
  address: '127.0.0.1',
  quiet: true,
  extensions: [new SQLite({ database: path.join(dataDir, 'hocuspocus.sqlite') })],
});
await server.listen();
announce(server.address.port);
