import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import type { AvatarUploadResponse } from '../../shared/schemas/avatars.ts';
import { nowSeconds } from '../../shared/time.ts';
import { AppError } from '../core/app-error.ts';
import { openUserFile } from '../core/storage-failure.ts';
import type { Storage, UserFile } from '../storage/index.ts';
import { encodeAvatar, probeImage, type ImageLimits } from './image.ts';
import { JobQueue } from './jobs.ts';
import * as repo from './repo.ts';

export interface AvatarLimits extends ImageLimits {
  maxBytes: number;
  /** Image jobs run at once; the rest wait their turn. */
  jobs: number;
}

export interface AvatarsDeps {
  /** The avatar is a row of the user's own file, so it moves with that file. */
  storage: Storage;
  logger: Logger;
  /** Base of the URLs the API returns (known only once the server listens). */
  publicUrl: () => string;
  limits: AvatarLimits;
  /**
   * Runs a write of the user's avatar as a change of their card (users: the directory's index keeps
   * the avatar's hash, for other users' requests): marked before the write, derived after it.
   */
  changeCard: <T>(userId: string, write: () => T) => Promise<T>;
}

/** Uploads that may wait for a job slot, per slot (each holds up to maxBytes meanwhile). */
const WAITING_PER_JOB = 16;

export interface AvatarImage {
  hash: string;
  contentType: string;
  bytes: Buffer;
}

/**
 * Avatars: one image per user, kept in the user's file, and the URLs that name them. Other features
 * (a user object's `avatar_url`) ask this service for the URL; it needs nothing of theirs.
 */
export class AvatarsService {
  private readonly jobs: JobQueue;
  private readonly limits: AvatarLimits;

  constructor(private readonly deps: AvatarsDeps) {
    this.limits = deps.limits;
    this.jobs = new JobQueue(deps.limits.jobs, deps.limits.jobs * WAITING_PER_JOB);
  }

  /** Validates, processes and stores an uploaded image file, replacing any previous avatar. */
  async upload(userId: string, input: Uint8Array): Promise<AvatarUploadResponse> {
    if (input.byteLength > this.limits.maxBytes) {
      throw new AppError('file_too_large', `The file is ${input.byteLength} bytes; the limit is ${this.limits.maxBytes}`);
    }
    // The probe reads only headers: junk and bombs are refused without waiting for a job slot.
    const probed = await probeImage(input, this.limits);
    const encoded = await this.jobs.run(() => encodeAvatar(input, probed, this.limits));
    const hash = createHash('sha256').update(encoded.bytes).digest('hex');
    await this.deps.changeCard(userId, () => {
      // Looked up after the awaits: an unpinned handle may have been evicted meanwhile.
      const file = this.file(userId);
      file.transaction(() =>
        repo.saveAvatar(file, {
          hash,
          content_type: encoded.contentType,
          width: encoded.width,
          height: encoded.height,
          animated: encoded.animated,
          updatedAt: nowSeconds(),
          bytes: encoded.bytes,
        }),
      );
    });
    return {
      success: true,
      avatar_url: this.urlFor(userId, hash),
      width: encoded.width,
      height: encoded.height,
      size: encoded.bytes.byteLength,
      animated: encoded.animated,
    };
  }

  /** Removes the caller's avatar; removing none is not an error (the end state is the same). */
  async remove(userId: string): Promise<void> {
    // None to remove: the card stays as it is, and no directory step is spent on it.
    if (repo.readAvatarHash(this.file(userId)) === null) return;
    await this.deps.changeCard(userId, () => {
      const file = this.file(userId);
      file.transaction(() => repo.deleteAvatar(file));
    });
  }

  /** The public avatar of a user (a snowflake id: the route checks it); the same 404 whether the user or only the avatar is missing. */
  image(userId: string): AvatarImage {
    let avatar: repo.StoredAvatar | undefined;
    try {
      avatar = repo.readAvatar(this.file(userId));
    } catch (error) {
      if (!(error instanceof AppError && error.code === 'user_not_found')) throw error;
    }
    if (avatar === undefined) throw new AppError('avatar_not_found', 'This user has no avatar');
    return { hash: avatar.hash, contentType: avatar.content_type, bytes: avatar.bytes };
  }

  /**
   * The `avatar_url` of a user whose avatar has this hash (their card's, or read from their file:
   * avatarHashOf), or null without an avatar.
   */
  urlOf(userId: string, hash: string | null): string | null {
    return hash === null ? null : this.urlFor(userId, hash);
  }

  /** `?v=` names the image, so a URL may be cached for good (see the GET route). */
  private urlFor(userId: string, hash: string): string {
    return `${this.deps.publicUrl()}/avatars/users/${userId}?v=${hash.slice(0, 16)}`;
  }

  private file(userId: string): UserFile {
    return openUserFile(this.deps.storage, this.deps.logger, userId);
  }
}
