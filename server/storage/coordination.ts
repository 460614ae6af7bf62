import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { Storage } from './index.ts';

/**
 * Two processes on one data folder: the server, and an admin command (`plexichat admin …`,
 * `doctor --fix`) that writes the same SQLite files through SQLite's own locking. What the server
 * keeps in memory over those files (memoised profile reads, the session cache, loaded documents of
 * a deleted account) must follow what the other process committed. SQLite says when that happened
 * (`PRAGMA data_version`, `UserFile.refresh`, `DirectoryFile.changedElsewhere`); this module says
 * when to look, without a look on every request (measured: a data_version read per request costs
 * GET /users/@me a third of its CPU):
 *
 * - the admin command, once its change is committed, connects to the server's notice socket in the
 *   data folder; the server looks at once and answers `ok`, and only then does the command exit: the
 *   next request sees the change, and a revoked session's sockets are already closed;
 * - the server also looks every `pollMs` (a second by default), for changes whose notice never came
 *   (a command killed between its commit and its notice, a folder too deep for a socket path);
 * - every write transaction of a user file looks first, under its lock, so the server never writes
 *   to the file of an account deleted meanwhile, whether it was told yet or not.
 */

/** The server's notice socket, in the data folder. */
function noticeSocketPath(dataDir: string): string {
  return path.join(dataDir, 'server.sock');
}

/**
 * Longest path a Unix socket can have (sun_path is 108 bytes on Linux, 104 on macOS; one for the
 * terminating zero). A deeper data folder goes without the socket: changes then take effect within
 * the poll interval.
 */
const MAX_SOCKET_PATH_BYTES = 103;

/** How long an admin command waits for the server to answer a notice before saying it did not. */
const NOTICE_TIMEOUT_MS = 10_000;

class ServerAlreadyRunningError extends Error {}

export interface NoticeListener {
  /** Where it listens, or undefined when the folder is too deep for a socket path. */
  socketPath: string | undefined;
  close(): Promise<void>;
}

/**
 * Listens on the data folder's notice socket; `onNotice` runs synchronously for each connection,
 * before it is answered. A socket file left by a server that died is replaced; one a live server
 * answers on means another server has this data folder, which is refused (two servers would each
 * trust their own memory of the same files).
 */
export async function listenForNotices(dataDir: string, onNotice: () => void): Promise<NoticeListener> {
  const socketPath = noticeSocketPath(dataDir);
  if (Buffer.byteLength(socketPath) > MAX_SOCKET_PATH_BYTES) return { socketPath: undefined, close: async () => {} };
  if (fs.existsSync(socketPath)) {
    if ((await sendNotice(socketPath, 2_000)) !== 'no-server') {
      throw new ServerAlreadyRunningError(`another Plexichat server is running on the data folder ${dataDir} (it answers on ${socketPath})`);
    }
    fs.rmSync(socketPath, { force: true });
  }
  const server = net.createServer((connection) => {
    // Contained: a failure here must not fail the process, and the command then says it got no answer.
    connection.on('error', () => connection.destroy());
    try {
      onNotice();
      connection.end('ok\n');
    } catch {
      connection.destroy();
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, () => {
      server.off('error', reject);
      resolve();
    });
  });
  // The notice changes nothing by itself, but only the server's own user should be able to send it.
  fs.chmodSync(socketPath, 0o600);
  // Shutdown is not held up by a command still connected.
  server.unref();
  return {
    socketPath,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        // A listener that was closed unlinks its socket file; this covers one that failed half-way.
        fs.rmSync(socketPath, { force: true });
      }),
  };
}

/**
 * Tells the server running on `dataDir` (if any) that this process committed changes: 'confirmed'
 * once it has looked at them, 'no-server' when none listens, 'no-answer' when one did not answer
 * in time (it still takes the changes within its poll interval).
 */
export function notifyServer(dataDir: string): Promise<'confirmed' | 'no-server' | 'no-answer'> {
  const socketPath = noticeSocketPath(dataDir);
  if (Buffer.byteLength(socketPath) > MAX_SOCKET_PATH_BYTES) return Promise.resolve('no-answer');
  return sendNotice(socketPath, NOTICE_TIMEOUT_MS);
}

function sendNotice(socketPath: string, timeoutMs: number): Promise<'confirmed' | 'no-server' | 'no-answer'> {
  return new Promise((resolve) => {
    let answer = '';
    const connection = net.createConnection(socketPath);
    const timer = setTimeout(() => {
      connection.destroy();
      resolve('no-answer');
    }, timeoutMs);
    const settle = (result: 'confirmed' | 'no-server' | 'no-answer') => {
      clearTimeout(timer);
      connection.destroy();
      resolve(result);
    };
    connection.setEncoding('utf8');
    connection.on('data', (chunk: string) => {
      answer += chunk;
    });
    connection.on('end', () => settle(answer.startsWith('ok') ? 'confirmed' : 'no-answer'));
    connection.on('error', (error: NodeJS.ErrnoException) => {
      // No socket file, or one nobody listens on (a server that died): there is no server to tell.
      settle(error.code === 'ENOENT' || error.code === 'ECONNREFUSED' ? 'no-server' : 'no-answer');
    });
  });
}

export interface ExternalChangeHandlers {
  /** Another process committed to the directory: sessions may have ended (the session cache is stale). */
  directoryChanged(): void;
  /** The account of an open user file was deleted by another process: let go of it (the file is closed right after). */
  accountDeleted(userId: string): void;
  /** A look that failed (from the timer: contained, the next one tries again). */
  failed(error: unknown): void;
}

export interface ExternalChangeWatch {
  /** Looks now: the directory first (sessions end, sockets close), then every open user file. */
  check(): void;
  close(): void;
}

/**
 * Looks for commits of other processes every `pollMs` and whenever `check` is called (a notice):
 * memos of changed user files are dropped on the way (`UserFiles.refreshOpen`); the handlers do
 * the rest. Each look costs one data_version read per open file, nothing per request.
 */
export function watchExternalChanges(storage: Storage, handlers: ExternalChangeHandlers, pollMs: number): ExternalChangeWatch {
  const check = () => {
    if (storage.directory.changedElsewhere()) handlers.directoryChanged();
    for (const userId of storage.userFiles.refreshOpen()) {
      handlers.accountDeleted(userId);
      storage.userFiles.forget(userId);
    }
  };
  const timer = setInterval(() => {
    try {
      check();
    } catch (error) {
      handlers.failed(error);
    }
  }, pollMs);
  // Housekeeping: it must not keep a process alive that has nothing else to do.
  timer.unref();
  return { check, close: () => clearInterval(timer) };
}
