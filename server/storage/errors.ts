/**
 * Storage failures a client can simply retry: the disk is full, the process ran out of file
 * descriptors, a file is locked or busy, or the server already holds as many user files open as
 * it may. Everything else from storage is a bug or damage, not a reason to retry.
 */
const RETRYABLE_SQLITE = /^SQLITE_(FULL|CANTOPEN|BUSY|LOCKED|IOERR|NOMEM)/;
const RETRYABLE_SYSTEM = new Set(['EMFILE', 'ENFILE', 'ENOSPC', 'EAGAIN', 'EBUSY']);

/** Every user file the server may keep open is in use (`--max-open-user-files`). */
export class StorageBusyError extends Error {
  override readonly name = 'StorageBusyError';
}

export function isRetryableStorageError(error: unknown): boolean {
  if (error instanceof StorageBusyError) return true;
  const code = errorCode(error);
  return code !== undefined && (RETRYABLE_SQLITE.test(code) || RETRYABLE_SYSTEM.has(code));
}

/** SQLite says CANTOPEN both for a missing file and for a process out of descriptors. */
export function isOutOfDescriptors(error: unknown): boolean {
  const code = errorCode(error);
  return code === 'SQLITE_CANTOPEN' || code === 'EMFILE' || code === 'ENFILE';
}

function errorCode(error: unknown): string | undefined {
  if (typeof error !== 'object' || error === null) return undefined;
  const code = (error as { code?: unknown }).code;
  return typeof code === 'string' ? code : undefined;
}
