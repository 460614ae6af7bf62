import path from 'node:path';
import fs from 'node:fs';
import { openForMoment } from './moments.ts';
import { DIRECTORY_MIGRATIONS } from './schema.ts';
import { StatementCache, dataVersionReader, openDatabase, type Db, type Statement } from './sqlite.ts';

/** `<dataDir>/directory.sqlite`: the index of users, sessions and everything that crosses users. */
export class DirectoryFile {
  readonly db: Db;
  private readonly statements: StatementCache;
  private readonly readDataVersion: () => number;
  /** `PRAGMA data_version` when last looked at (see `changedElsewhere`). */
  private dataVersion: number;

  /**
   * `moment`: one moment's connection of a cluster's process (storage/moments.ts), which the caller
   * closes as soon as its read or write is done; otherwise one node's, held open.
   */
  constructor(dataDir: string, options: { moment?: boolean } = {}) {
    fs.mkdirSync(dataDir, { recursive: true });
    const file = path.join(dataDir, 'directory.sqlite');
    this.db = options.moment === true ? openForMoment(file, { migrations: DIRECTORY_MIGRATIONS }) : openDatabase(file, { migrations: DIRECTORY_MIGRATIONS });
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
