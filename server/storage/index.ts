import { snowflakeTimeMs } from '../../shared/snowflake.ts';
import { DirectoryFile } from './directory.ts';
import type { DirectoryStore } from './directory-store.ts';
import {
  IdReservationFile,
  adoptLegacyReservation,
  createIdGenerator,
  createLeasedIdGenerator,
  type IdGenerator,
  type ReservationMark,
  type WorkerHolding,
} from './ids.ts';
import { SqliteDirectory, directoryRecordInTurns, type DirectoryRecord } from './sqlite-directory.ts';
import { UserFiles } from './user-files.ts';

export { UserFile, UserFileDeletedError, UserFileMissingError } from './user-files.ts';

export interface Storage {
  /**
   * What crosses users: `localDirectory` on one node; a cluster node puts its Redis store here
   * before any service is made (services keep the store they are given).
   */
  directory: DirectoryStore;
  /**
   * `directory.sqlite`: the directory of one node (held open, the same object as `directory`); in
   * cluster mode only the record that it moved to Redis, and the move's export, each call a moment
   * of its own (storage/moments.ts).
   */
  readonly localDirectory: DirectoryRecord;
  userFiles: UserFiles;
  /** A fresh snowflake. Safe inside any transaction: its reservation is written apart (ids.ts). */
  nextId: IdGenerator;
  /**
   * An id another instance issued (an imported account's): the reservation moves past its
   * millisecond, so this data folder never issues it again.
   */
  adoptId(id: string): void;
  /**
   * Cluster mode: from now on ids are issued with the worker id `current` holds (leased in Redis,
   * cluster/worker-ids.ts), inside its reserved range, instead of through `ids.sqlite`. Called
   * once, at start, before anything takes an id.
   */
  issueIdsFrom(current: () => WorkerHolding | undefined): void;
  /** `ids.sqlite`'s mark, which cluster nodes also raise past each range they start (cluster/worker-ids.ts). */
  reservationMark: ReservationMark;
  close(): void;
}

export interface StorageOptions {
  dataDir: string;
  maxOpenUserFiles: number;
  workerId: number;
  /** The id generator's clock (tests step it back to play a restart after a clock change). */
  clock?: () => number;
  /**
   * Cluster mode (a node, or a command given `--redis-url`): `ids.sqlite` and `directory.sqlite`
   * are never held open, each use opens them for a moment alone (storage/moments.ts), and
   * `directory` is the Redis store the caller sets before any use.
   */
  clustered?: boolean;
}

export function openStorage(options: StorageOptions): Storage {
  return options.clustered === true ? openClusterStorage(options) : openNodeStorage(options);
}

/** One node: both files held open for the process's life, WAL with shared memory (as fast as it gets). */
function openNodeStorage(options: StorageOptions): Storage {
  const directoryFile = new DirectoryFile(options.dataDir);
  let reservations: IdReservationFile;
  try {
    reservations = new IdReservationFile(options.dataDir, { inTurns: false });
    adoptLegacyReservation(directoryFile, reservations);
  } catch (error) {
    directoryFile.close();
    throw error;
  }
  const directory = new SqliteDirectory(directoryFile);
  return storageOf(options, directory, directory, reservations, () => directoryFile.close());
}

/** Cluster mode: nothing of the folder's shared files stays open; the directory is Redis's. */
function openClusterStorage(options: StorageOptions): Storage {
  const reservations = new IdReservationFile(options.dataDir, { inTurns: true });
  const directoryFile = new DirectoryFile(options.dataDir, { moment: true });
  try {
    adoptLegacyReservation(directoryFile, reservations);
  } finally {
    directoryFile.close();
  }
  return storageOf(options, undefined, directoryRecordInTurns(options.dataDir), reservations, () => {});
}

function storageOf(
  options: StorageOptions,
  initialDirectory: DirectoryStore | undefined,
  localDirectory: DirectoryRecord,
  reservations: IdReservationFile,
  closeDirectory: () => void,
): Storage {
  const userFiles = new UserFiles(options.dataDir, options.maxOpenUserFiles);
  // One function for the services to keep, whichever generator is behind it.
  let issue: IdGenerator = createIdGenerator(reservations, options.workerId, options.clock);
  let directory = initialDirectory;
  return {
    get directory(): DirectoryStore {
      // Cluster mode: Redis's store is set at start, before any service is made.
      if (directory === undefined) throw new Error("the cluster's directory (Redis) is used before it was set");
      return directory;
    },
    set directory(store: DirectoryStore) {
      directory = store;
    },
    localDirectory,
    userFiles,
    nextId: () => issue(),
    adoptId: (id) => reservations.raise(snowflakeTimeMs(id) + 1),
    issueIdsFrom(current) {
      issue = createLeasedIdGenerator(current, options.clock);
    },
    reservationMark: { read: () => reservations.read() ?? 0, raise: (untilMs) => reservations.raise(untilMs) },
    close() {
      userFiles.closeAll();
      reservations.close();
      closeDirectory();
    },
  };
}
