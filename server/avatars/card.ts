import type { UserFile } from '../storage/index.ts';
import * as repo from './repo.ts';

/**
 * The avatar's hash, as a user's card keeps it (the directory's index; users derives the card from
 * the user file), or null without an avatar. Reads the hash column only, never the image, and
 * needs no image library: admin commands, which derive cards too, do not load one.
 */
export function avatarHashOf(file: UserFile): string | null {
  return repo.readAvatarHash(file);
}
