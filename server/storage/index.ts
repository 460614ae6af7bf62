import { DirectoryFile } from './directory.ts';
import { createIdGenerator, type IdGenerator } from './ids.ts';
import { UserFiles } from './user-files.ts';

export { DirectoryFile } from './directory.ts';
export { UserFile, UserFileMissingError } from './user-files.ts';

export interface Storage {
  directory: DirectoryFile;
  userFiles: UserFiles;
  nextId: IdGenerator;
  close(): void;
}

export function openStorage(options: { dataDir: string; maxOpenUserFiles: number; workerId: number }): Storage {
  const directory = new DirectoryFile(options.dataDir);
  const userFiles = new UserFiles(options.dataDir, options.maxOpenUserFiles);
  return {
    directory,
    userFiles,
    nextId: createIdGenerator(directory, options.workerId),
    close() {
      userFiles.closeAll();
      directory.close();
    },
  };
}
