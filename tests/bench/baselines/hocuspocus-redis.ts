/**
 * Baseline for the cluster scenario: one of several Hocuspocus 4 instances scaled out with its
 * Redis extension (default settings: every instance that has a client loads the document and
 * relays each change through Redis pub/sub, and a Redis lock lets one instance at a time store it),
 * all storing into one SQLite file in the shared data folder with the SQLite extension, as in the
 * single-instance baseline (hocuspocus.ts).
 */
import path from 'node:path';
import { Server } from '@hocuspocus/server';
import { SQLite } from '@hocuspocus/extension-sqlite';
import { Redis } from '@hocuspocus/extension-redis';
import { announce, baselineArgs } from './args.ts';

const { port, dataDir, redisUrl } = baselineArgs();
if (dataDir === undefined) throw new Error('--data-dir is required');
if (redisUrl === undefined) throw new Error('--redis-url is required');
const redis = new URL(redisUrl);
const server = new Server({
  port,
  address: '127.0.0.1',
  quiet: true,
  extensions: [new Redis({ host: redis.hostname, port: Number(redis.port) }), new SQLite({ database: path.join(dataDir, 'hocuspocus.sqlite') })],
});
await server.listen();
announce(server.address.port);
