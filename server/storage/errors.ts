/**
 * Failures of the storage underneath us that a later retry can cure: a full disk, a file that
 * cannot be opened (no inode or descriptor left), an I/O error, a lock held too long, or every user
 * file the server may open in use. Callers answer them with 503 and `Retry-After` (sync: close code
 * 1013) instead of 500, which is kept for bugs. Constraint violations, corruption, schema mismatches
 * and misuse are not retryable: retrying the same call fails the same way.
 */
const RETRYABLE_SQLITE_CODES = new Set(['SQLITE_FULL', 'SQLITE_CANTOPEN', 'SQLITE_BUSY']);
/** Extended result codes of these families (e.g. SQLITE_IOERR_WRITE, SQLITE_BUSY_TIMEOUT) are retryable too. */
const RETRYABLE_SQLITE_FAMILIES = ['SQLITE_IOERR', 'SQLITE_BUSY_'];
const RETRYABLE_NODE_CODES = new Set(['EMFILE', 'ENFILE', 'ENOSPC']);

/** Every user file the server may keep open (`--max-open-user-files`) is in use by a live connection. */
export class StorageBusyError extends Error {
  override readonly name: string = 'StorageBusyError';
}

/**
 * Cluster mode: the directory's Redis did not answer (connection down, a command timed out, Redis
 * loading or out of memory). Whether a step whose answer was lost was applied is unknown, as with
 * any lost answer. Retryable: the connection comes back by itself, and the client asks again.
 */
/**
 * Cluster mode: what the nodes share in Redis (the directory, a worker id's lease) cannot be
 * reached or used right now. Retryable; answered with the cluster's own 503 (retry in a second).
 */
export class ClusterUnavailableError extends StorageBusyError {
  override readonly name: string = 'ClusterUnavailableError';
}

/**
 * Cluster mode: this node no longer owns the user's file (its lease ended, another node took it
 * over and wrote a newer fencing token). Nothing was written. Retryable: the client's next try
 * reaches the owner.
 */
export class NotOwnerError extends ClusterUnavailableError {
  override readonly name: string = 'NotOwnerError';

  constructor(
    message: string,
    /** The newer token found in the file, when that is why. */
    readonly storedToken?: number,
  ) {
    super(message);
  }
}

/**
 * Cluster mode: the user's file is held by another process (its owner node, or a command it was
 * handed to), which opened it in exclusive locking mode; nothing was read or written. Retryable:
 * the holder lets go when it gives the user up.
 */
export class FileHeldElsewhereError extends NotOwnerError {
  override readonly name = 'FileHeldElsewhereError';
}

/** The cluster's directory (Redis) did not answer, or answered that it cannot serve now. */
export class DirectoryUnavailableError extends ClusterUnavailableError {
  override readonly name = 'DirectoryUnavailableError';
}

/**
 * Whether `error`, or one of its causes a few links deep, passes `test`: a wrapper must not hide
 * what it wraps (a full disk, a lost lease).
 */
function inCauses(error: unknown, test: (cause: object) => boolean): boolean {
  for (let current = error, depth = 0; depth < 4 && typeof current === 'object' && current !== null; depth += 1) {
    if (test(current)) return true;
    current = (current as { cause?: unknown }).cause;
  }
  return false;
}

/** Whether `error`, or one of its causes, is a `ClusterUnavailableError`. */
export function isClusterUnavailable(error: unknown): boolean {
  return inCauses(error, (cause) => cause instanceof ClusterUnavailableError);
}

/** Whether `error`, or one of its causes, is a `NotOwnerError`. */
export function isNotOwner(error: unknown): boolean {
  return inCauses(error, (cause) => cause instanceof NotOwnerError);
}

export function isRetryableStorageError(error: unknown): boolean {
  return inCauses(error, (cause) => {
    if (cause instanceof StorageBusyError) return true;
    const code = (cause as { code?: unknown }).code;
    if (typeof code !== 'string') return false;
    return RETRYABLE_SQLITE_CODES.has(code) || RETRYABLE_NODE_CODES.has(code) || RETRYABLE_SQLITE_FAMILIES.some((family) => code.startsWith(family));
  });
}

/** SQLite says CANTOPEN both for a missing file and for a process out of descriptors. */
export function isOutOfDescriptors(error: unknown): boolean {
  const code = typeof error === 'object' && error !== null ? (error as { code?: unknown }).code : undefined;
  return code === 'SQLITE_CANTOPEN' || code === 'EMFILE' || code === 'ENFILE';
}
