import { snowflakeTimeMs } from '../../shared/snowflake.ts';
import { DirectoryFile } from './directory.ts';
import { IdReservationFile, adoptLegacyReservation, createIdGenerator, type IdGenerator } from './ids.ts';
import { UserFiles } from './user-files.ts';

export { DirectoryFile } from './directory.ts';
export { UserFile, UserFileDeletedError, UserFileMissingError } from './user-files.ts';

export interface Storage {
  directory: DirectoryFile;
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
  const directory = new DirectoryFile(options.dataDir);
  let reservations: IdReservationFile;
  try {
    reservations = new IdReservationFile(options.dataDir);
    adoptLegacyReservation(directory, reservations);
  } catch (error) {
    directory.close();
    throw error;
  }
  const userFiles = new UserFiles(options.dataDir, options.maxOpenUserFiles);
  return {
    directory,
    userFiles,
    nextId: createIdGenerator(reservations, options.workerId, options.clock),
    adoptId: (id) => reservations.raise(snowflakeTimeMs(id) + 1),
    close() {
      userFiles.closeAll();
      reservations.close();
      directory.close();
    },
  };
}
