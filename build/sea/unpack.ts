/**
 * Runs only inside the single executable. Node loads a native addon only from a file (dlopen), so
 * the addons the executable carries as assets are unpacked into a cache folder named after this
 * build, checked against the SHA-256 the build recorded, and loaded from there.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import sea from 'node:sea';
import { cacheHome } from '../../server/config.ts';
import { type AddonFile, type AddonName, MANIFEST_ASSET, type Manifest } from './manifest.ts';

/** Files are hashed in pieces of this size: the largest (libvips) is ~19 MB, never held whole. */
const CHUNK_BYTES = 1024 * 1024;

function manifest(): Manifest {
  // Written by build/binary.ts into this same executable, beside the files it describes.
  return JSON.parse(sea.getAsset(MANIFEST_ASSET, 'utf8')) as Manifest;
}

function folderOf(manifest: Manifest): string {
  return path.join(cacheHome(), 'plexichat', manifest.id);
}

/** Creates the folder (owner only) and refuses one others could write to: what it holds is code we run. */
function prepareFolder(folder: string): void {
  fs.mkdirSync(folder, { recursive: true, mode: 0o700 });
  const stat = fs.lstatSync(folder);
  if (!stat.isDirectory() || stat.uid !== process.getuid?.() || (stat.mode & 0o022) !== 0) {
    throw new Error(`${folder} must be a folder that only its owner (this user) can write to`);
  }
}

function fileSha256(file: string): string {
  const fd = fs.openSync(file, 'r');
  try {
    const hash = crypto.createHash('sha256');
    const buffer = Buffer.allocUnsafe(CHUNK_BYTES);
    for (let read = fs.readSync(fd, buffer); read > 0; read = fs.readSync(fd, buffer)) hash.update(buffer.subarray(0, read));
    return hash.digest('hex');
  } finally {
    fs.closeSync(fd);
  }
}

/** The file is there with the right size and, when `check` is 'sha256', the right bytes. */
function inPlace(folder: string, file: AddonFile, check: 'size' | 'sha256'): boolean {
  const target = path.join(folder, file.path);
  const stat = fs.statSync(target, { throwIfNoEntry: false });
  if (stat === undefined || !stat.isFile() || stat.size !== file.size) return false;
  return check === 'size' || fileSha256(target) === file.sha256;
}

/**
 * Writes one asset to its place: to a unique temporary name in the same folder, flushed to disk,
 * then renamed over the target. A crash leaves at worst a stray temporary file, never a truncated
 * addon under the real name, and two processes unpacking at once each rename a whole copy.
 */
function unpack(folder: string, file: AddonFile): void {
  // Not a copy: the asset as mapped from the executable (only read here).
  const raw = sea.getRawAsset(file.path);
  if (!(raw instanceof ArrayBuffer)) throw new Error(`asset ${file.path} is not binary`);
  const bytes = new Uint8Array(raw);
  if (bytes.byteLength !== file.size || crypto.createHash('sha256').update(bytes).digest('hex') !== file.sha256) {
    throw new Error(`this executable is damaged: its ${file.path} does not match the checksum recorded when it was built`);
  }
  const target = path.join(folder, file.path);
  fs.mkdirSync(path.dirname(target), { recursive: true, mode: 0o700 });
  const temporary = `${target}.${process.pid}-${crypto.randomBytes(6).toString('hex')}.tmp`;
  try {
    const fd = fs.openSync(temporary, 'wx', 0o700);
    try {
      for (let written = 0; written < bytes.byteLength; ) written += fs.writeSync(fd, bytes, written);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(temporary, target);
  } catch (error) {
    fs.rmSync(temporary, { force: true });
    throw error;
  }
  // The rename itself is on disk only once the folder is.
  const dir = fs.openSync(path.dirname(target), 'r');
  try {
    fs.fsyncSync(dir);
  } finally {
    fs.closeSync(dir);
  }
}

/**
 * At start: checks every unpacked file against its SHA-256 and unpacks again any that is missing
 * or differs (all of them on the first start of a build).
 */
export function unpackAddons(): void {
  const current = manifest();
  const folder = folderOf(current);
  prepareFolder(folder);
  for (const addon of Object.values(current.addons)) {
    for (const file of addon.files) if (!inPlace(folder, file, 'sha256')) unpack(folder, file);
  }
}

/**
 * What `require` of the addon's package returns: the stand-ins build/bundle.ts writes for those
 * packages call this (hence @public: no import of it is visible in the sources).
 * Every file was checked at start; this puts back only what went missing since (a cache cleaner
 * that ran before the first avatar upload loaded sharp, say), so a late load finds its files.
 *
 * @public
 */
export function loadAddon(name: AddonName): unknown {
  const current = manifest();
  const folder = folderOf(current);
  const addon = current.addons[name];
  const missing = addon.files.filter((file) => !inPlace(folder, file, 'size'));
  if (missing.length > 0) prepareFolder(folder);
  for (const file of missing) unpack(folder, file);
  const module = { exports: {} };
  try {
    process.dlopen(module, path.join(folder, addon.main));
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    const hint = /failed to map segment|operation not permitted/i.test(message)
      ? ' (is that folder on a filesystem mounted noexec? Point XDG_CACHE_HOME at one that allows executables)'
      : '';
    throw new Error(`cannot load the native addon ${name} from ${folder}: ${message}${hint}`);
  }
  return module.exports;
}
