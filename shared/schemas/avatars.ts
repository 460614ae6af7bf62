import { z } from 'zod';

/** Side of the square every avatar is stored and served at. */
export const AVATAR_SIZE = 256;

/**
 * `POST /users/@me/avatar` is multipart/form-data; its fields, once parsed, must match this.
 * The image format is decided from the bytes later, never from the part's type or filename.
 */
export const avatarUploadFormSchema = z.object({
  file: z.instanceof(Uint8Array, { message: 'Required: the image, as a multipart file field named "file"' }),
});
export type AvatarUploadForm = z.infer<typeof avatarUploadFormSchema>;

/** The documented answer to an avatar upload. */
export interface AvatarUploadResponse {
  success: true;
  avatar_url: string;
  width: number;
  height: number;
  /** Byte length of the stored (re-encoded) image. */
  size: number;
  animated: boolean;
}
