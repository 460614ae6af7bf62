/** What the build records about the native addons it puts into the single executable. */

export type AddonName = 'uws' | 'better-sqlite3' | 'argon2' | 'sharp';

export interface AddonFile {
  /** Its asset key, and where it is unpacked relative to the cache folder (`<package>/<path>`). */
  path: string;
  size: number;
  /** SHA-256 of its bytes, hex. */
  sha256: string;
}

export interface Addon {
  /** The file to dlopen (one of `files`). */
  main: string;
  files: AddonFile[];
}

export interface Manifest {
  /** `<package version>-<hash of every file>`: the name of the cache folder this build unpacks into. */
  id: string;
  addons: Record<AddonName, Addon>;
}

/** The asset holding the manifest as JSON. */
export const MANIFEST_ASSET = 'plexichat-manifest.json';
