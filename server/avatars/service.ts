import { createHash } from 'node:crypto';
import { avatarUploadFormSchema, type AvatarUploadResponse } from '../../shared/schemas/avatars.ts';
import { isSnowflake } from '../../shared/snowflake.ts';
import { AppError } from '../core/app-error.ts';
import { parseMultipart } from '../http/multipart.ts';
import type { UsersService } from '../users/service.ts';
import { encodeAvatar, probeImage, type ImageLimits } from './image.ts';
import { JobQueue } from './jobs.ts';
import * as repo from './repo.ts';
import { nowSeconds } from '../../shared/time.ts';

export interface AvatarLimits extends ImageLimits {
  maxBytes: number;
  /** Image jobs run at once; the rest wait their turn. */
  jobs: number;
}

/** Uploads that may wait for a job slot, per slot (each holds up to maxBytes meanwhile). */
const WAITING_PER_JOB = 16;

export interface AvatarImage {
  hash: string;
  contentType: string;
  bytes: Buffer;
}

export class AvatarsService {
  private readonly jobs: JobQueue;

  constructor(
    private readonly users: UsersService,
    private readonly limits: AvatarLimits,
  ) {
    this.jobs = new JobQueue(limits.jobs, limits.jobs * WAITING_PER_JOB);
  }

  /** Validates, processes and stores an uploaded avatar, replacing any previous one. */
  async upload(userId: string, contentType: string | undefined, body: Buffer): Promise<AvatarUploadResponse> {
    const parts = parseMultipart(body, contentType);
    if (parts === null) {
      throw new AppError('unsupported_media_type', 'Send the image as multipart/form-data in a file field named "file"');
    }
    const form = avatarUploadFormSchema.safeParse({ file: parts.find((part) => part.name === 'file')?.data });
    if (!form.success) {
      throw new AppError('invalid_input', 'Validation failed', {
        errors: form.error.issues.map((issue) => ({ path: issue.path.join('.') || 'file', message: issue.message })),
      });
    }
    const input = form.data.file;
    if (input.byteLength > this.limits.maxBytes) {
      throw new AppError('file_too_large', `The file is ${input.byteLength} bytes; the limit is ${this.limits.maxBytes}`);
    }
    // The probe reads only headers: junk and bombs are refused without waiting for a job slot.
    const probed = await probeImage(input, this.limits);
    const encoded = await this.jobs.run(() => encodeAvatar(input, probed, this.limits));
    const hash = createHash('sha256').update(encoded.bytes).digest('hex');
    // Looked up after the awaits: an unpinned handle may have been evicted meanwhile.
    const file = this.users.file(userId);
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
    const avatarUrl = this.users.privateUser(userId).avatar_url;
    if (avatarUrl === null) throw new Error('avatar stored but no avatar_url derived');
    return {
      success: true,
      avatar_url: avatarUrl,
      width: encoded.width,
      height: encoded.height,
      size: encoded.bytes.byteLength,
      animated: encoded.animated,
    };
  }

  /** Removes the caller's avatar; removing none is not an error (the end state is the same). */
  remove(userId: string): void {
    const file = this.users.file(userId);
    file.transaction(() => repo.deleteAvatar(file));
  }

  /** The public avatar of a user; the same 404 whether the user or only the avatar is missing. */
  image(userId: string): AvatarImage {
    if (!isSnowflake(userId)) throw new AppError('invalid_user_id', 'user_id must be a snowflake id (decimal digits)');
    let avatar: repo.StoredAvatar | undefined;
    try {
      avatar = repo.readAvatar(this.users.file(userId));
    } catch (error) {
      if (!(error instanceof AppError && error.code === 'user_not_found')) throw error;
    }
    if (avatar === undefined) throw new AppError('avatar_not_found', 'This user has no avatar');
    return { hash: avatar.hash, contentType: avatar.content_type, bytes: avatar.bytes };
  }
}
