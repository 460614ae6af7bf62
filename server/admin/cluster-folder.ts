import { SqliteDirectory, directoryRecordInTurns } from '../storage/sqlite-directory.ts';

/**
 * Whether the data folder's directory moved to a cluster's Redis (docs/cluster.md): then its user
 * files are held by the nodes, and a command reaches them, and the directory, only through that
 * Redis (`--redis-url`). False when the directory cannot be read (a check says why).
 * `clustered`: asked by a command given `--redis-url`, one of the cluster's processes, which opens
 * the file only for the moment of the read (storage/moments.ts).
 */
export async function movedToRedis(dataDir: string, options: { clustered: boolean }): Promise<boolean> {
  if (options.clustered) {
    try {
      return directoryRecordInTurns(dataDir).movedToRedis();
    } catch {
      return false;
    }
  }
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
