import { SqliteDirectory } from '../storage/sqlite-directory.ts';

/**
 * Whether the data folder's directory moved to a cluster's Redis (docs/cluster.md): then its user
 * files are held by the nodes, and a command reaches them, and the directory, only through that
 * Redis (`--redis-url`). False when the directory cannot be read (a check says why).
 */
export async function movedToRedis(dataDir: string): Promise<boolean> {
  let directory: SqliteDirectory | undefined;
  try {
    directory = new SqliteDirectory(dataDir);
    return directory.movedToRedis();
  } catch {
    return false;
  } finally {
    await directory?.close();
  }
}
