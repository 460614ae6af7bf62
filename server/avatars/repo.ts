import type { UserFile } from '../storage/index.ts';

export interface StoredAvatar {
  hash: string;
  content_type: string;
  width: number;
  height: number;
  animated: number;
  bytes: Buffer;
}

/** Called for every user object, so it reads the hash column only, never the image. */
export function readAvatarHash(file: UserFile): string | null {
  const row = file.stmt('SELECT hash FROM avatar').get() as { hash: string } | undefined;
  return row?.hash ?? null;
}

export function readAvatar(file: UserFile): StoredAvatar | undefined {
  return file.stmt('SELECT hash, content_type, width, height, animated, bytes FROM avatar').get() as StoredAvatar | undefined;
}

export function saveAvatar(file: UserFile, avatar: Omit<StoredAvatar, 'animated'> & { animated: boolean; updatedAt: number }): void {
  file
    .stmt(
      `INSERT INTO avatar (singleton, hash, content_type, width, height, animated, updated_at, bytes)
       VALUES (1, ?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT (singleton) DO UPDATE SET
         hash = excluded.hash, content_type = excluded.content_type, width = excluded.width,
         height = excluded.height, animated = excluded.animated, updated_at = excluded.updated_at,
         bytes = excluded.bytes`,
    )
    .run(avatar.hash, avatar.content_type, avatar.width, avatar.height, avatar.animated ? 1 : 0, avatar.updatedAt, avatar.bytes);
}

export function deleteAvatar(file: UserFile): void {
  file.stmt('DELETE FROM avatar').run();
}
