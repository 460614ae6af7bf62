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
import { SqliteDirectory } from './sqlite-directory.ts';
import { UserFiles } from './user-files.ts';

export { UserFile, UserFileDeletedError, UserFileMissingError } from './user-files.ts';

export interface Storage {
  /** What crosses users: `directory.sqlite` here (a cluster swaps in its Redis store). */
  directory: DirectoryStore;
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
}

export function openStorage(options: StorageOptions): Storage {
  const directoryFile = new DirectoryFile(options.dataDir);
  let reservations: IdReservationFile;
  try {
    reservations = new IdReservationFile(options.dataDir);
    adoptLegacyReservation(directoryFile, reservations);
  } catch (error) {
    directoryFile.close();
    throw error;
  }
  const directory = new SqliteDirectory(directoryFile);
  const userFiles = new UserFiles(options.dataDir, options.maxOpenUserFiles);
  // One function for the services to keep, whichever generator is behind it.
  let issue: IdGenerator = createIdGenerator(reservations, options.workerId, options.clock);
  return {
    directory,
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
      directoryFile.close();
    },
  };
}
