import path from 'node:path';
import fs from 'node:fs';
import { DIRECTORY_MIGRATIONS } from './schema.ts';
import { StatementCache, openDatabase, type Db, type Statement } from './sqlite.ts';

/** `<dataDir>/directory.sqlite`: the index of users, sessions and everything that crosses users. */
export class DirectoryFile {
  readonly db: Db;
  private readonly statements: StatementCache;

  constructor(dataDir: string) {
    fs.mkdirSync(dataDir, { recursive: true });
    this.db = openDatabase(path.join(dataDir, 'directory.sqlite'), { migrations: DIRECTORY_MIGRATIONS });
    this.statements = new StatementCache(this.db);
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
