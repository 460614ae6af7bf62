import type { Logger } from 'pino';
import { isClusterUnavailable, isNotOwner, isRetryableStorageError } from '../storage/errors.ts';
import { UserFileMissingError, type Storage, type UserFile } from '../storage/index.ts';
import { AppError } from './app-error.ts';

/** What clients are told to wait (seconds) before retrying a request that hit a storage failure. */
export const STORAGE_RETRY_AFTER_S = 5;

/**
 * `error` unchanged, or, when it is a storage failure a retry can cure (full disk, I/O error, no file
 * descriptor left...), a 503 `service_unavailable` with `Retry-After` saying `message`. A 500 would
 * tell the client it hit a bug and that retrying is pointless; here waiting is exactly what helps.
 * The cause is logged, since the answer does not carry it.
 */
export function unavailableOnStorageFailure(logger: Logger, error: unknown, message: string): unknown {
  if (!isRetryableStorageError(error)) return error;
  const cluster = clusterUnavailable(logger, error);
  if (cluster !== undefined) return cluster;
  logger.warn({ err: error }, `storage failure answered with 503: ${message}`);
  return new AppError('service_unavailable', message, { headers: { 'Retry-After': String(STORAGE_RETRY_AFTER_S) } });
}

/** What the cluster's 503 says: nothing is wrong with the disk, the shared Redis is out of reach. */
export const CLUSTER_UNREACHABLE = 'The cluster cannot be reached right now; retry';
/** ... or this node stopped serving the user on the way (its lease ended): another one takes over. */
const USER_MOVING = 'Your data is moving between servers right now; retry shortly';

/**
 * Cluster mode: the 503 for a failure of what the nodes share in Redis (the directory, the worker
 * id's lease), retry in a second, as the cluster's other refusals; undefined for any other error.
 */
export function clusterUnavailable(logger: Logger, error: unknown): AppError | undefined {
  if (!isClusterUnavailable(error)) return undefined;
  logger.warn({ err: error }, 'the cluster could not serve this right now: answered with 503');
  const message = isNotOwner(error) ? USER_MOVING : CLUSTER_UNREACHABLE;
  return new AppError('service_unavailable', message, { headers: { 'Retry-After': '1' } });
}

/** The messages of those answers, one per kind of operation; each says what did not happen. */
const FAILING = "the server's storage is failing right now (disk full, I/O error or no file handle left); try again later";
export const STORAGE_FAILURE = {
  read: `Could not read: ${FAILING}`,
  write: `The change was not saved: ${FAILING}`,
  register: `The account was not created: ${FAILING}`,
  login: `Not signed in: ${FAILING}`,
} as const;

/**
 * A user's file, for any feature that keeps data in it: 404 `user_not_found` when there is none,
 * 503 when it cannot be opened for a reason a retry can cure. The handle stays open only until
 * another user file is opened (see UserFiles): use it at once, or look it up again after an await.
 */
export function openUserFile(storage: Storage, logger: Logger, userId: string): UserFile {
  try {
    return storage.userFiles.get(userId);
  } catch (error) {
    if (error instanceof UserFileMissingError) throw new AppError('user_not_found', 'No user with that id');
    throw unavailableOnStorageFailure(logger, error, STORAGE_FAILURE.read);
  }
}

/**
 * Awaits `work`; a storage failure a retry can cure (the directory store busy or unreachable
 * included) rejects with the 503 of `unavailableOnStorageFailure`, saying `message`.
 */
export async function guardStorage<T>(logger: Logger, message: string, work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (error) {
    throw unavailableOnStorageFailure(logger, error, message);
  }
}
