import path from 'node:path';
import fs from 'node:fs';
import { DIRECTORY_MIGRATIONS } from './schema.ts';
import { StatementCache, dataVersionReader, openDatabase, type Db, type Statement } from './sqlite.ts';

/** `<dataDir>/directory.sqlite`: the index of users, sessions and everything that crosses users. */
export class DirectoryFile {
  readonly db: Db;
  private readonly statements: StatementCache;
  private readonly readDataVersion: () => number;
  /** `PRAGMA data_version` when last looked at (see `changedElsewhere`). */
  private dataVersion: number;

  constructor(dataDir: string) {
    fs.mkdirSync(dataDir, { recursive: true });
    this.db = openDatabase(path.join(dataDir, 'directory.sqlite'), { migrations: DIRECTORY_MIGRATIONS });
    this.statements = new StatementCache(this.db);
    this.readDataVersion = dataVersionReader(this.db);
    this.dataVersion = this.readDataVersion();
  }

  /**
   * Whether another process (an admin command) committed to the directory since the last call:
   * what this process keeps over it (the session cache) must then be read again.
   */
  changedElsewhere(): boolean {
    const version = this.readDataVersion();
    if (version === this.dataVersion) return false;
    this.dataVersion = version;
    return true;
  }

  stmt(sql: string): Statement {
    return this.statements.get(sql);
  }

  transaction<T>(fn: () => T): T {
    return this.db.transaction(fn).immediate();
  }

  close(): void {
    this.db.close();
  }
}
