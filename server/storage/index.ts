import { snowflakeTimeMs } from '../../shared/snowflake.ts';
import { DirectoryFile } from './directory.ts';
import type { DirectoryStore } from './directory-store.ts';
import { IdReservationFile, adoptLegacyReservation, createIdGenerator, type IdGenerator } from './ids.ts';
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
  return {
    directory,
    userFiles,
    nextId: createIdGenerator(reservations, options.workerId, options.clock),
    adoptId: (id) => reservations.raise(snowflakeTimeMs(id) + 1),
    close() {
      userFiles.closeAll();
      reservations.close();
      directoryFile.close();
    },
  };
}
