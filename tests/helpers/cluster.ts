/**
 * A cluster of a test's own (docs/cluster.md): a data folder, a real redis-server, and nodes
 * started in this process on them, all closed whatever happens.
 */
import fs from 'node:fs';
import type { ServerOptions } from '../../server/app.ts';
import type { Config } from '../../server/config.ts';
import { RedisServer } from './redis.ts';
import { startServer, tempDir, type TestServer } from './server.ts';

export interface ClusterRig {
  dataDir: string;
  redis: RedisServer;
  /** A node (an in-process server) on the folder and the Redis; closed with the rig. */
  startNode(nodeId: string, leaseMs: number, options?: ServerOptions, config?: Partial<Config>): Promise<TestServer>;
  /** Closes the nodes started so far. */
  stopNodes(): Promise<void>;
}

/** Runs `body` with a fresh rig, and closes its nodes, its Redis and its folder whatever happens. */
export async function withCluster(prefix: string, body: (rig: ClusterRig) => Promise<void>): Promise<void> {
  const dataDir = tempDir(prefix);
  const redis = await RedisServer.start();
  const nodes: TestServer[] = [];
  const stopNodes = async () => {
    for (const node of nodes.splice(0)) await node.close();
  };
  try {
    await body({
      dataDir,
      redis,
      startNode: async (nodeId, leaseMs, options, config) => {
        const node = await startServer({ ...config, dataDir, redisUrl: redis.url, nodeId, leaseMs }, options);
        nodes.push(node);
        return node;
      },
      stopNodes,
    });
  } finally {
    redis.resume();
    await stopNodes();
    await redis.close();
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
}
