/**
 * The native addons the server loads, and where the installed packages keep their binaries for
 * this machine (the single executable is built for the platform it is built on). The JavaScript
 * of these packages is bundled; their binaries become assets of the executable.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { AddonName } from './sea/manifest.ts';

export interface AddonSource {
  name: AddonName;
  /** The file to dlopen, as a path relative to `node_modules` (see `files`). */
  main: string;
  /**
   * Every file the addon needs, as `<package name>/<path in the package>` → its absolute path now.
   * The executable unpacks them with the same relative layout, so a binary that finds a library
   * relative to itself (sharp's RPATH `$ORIGIN/../../sharp-libvips-<platform>/lib`) finds it there.
   */
  files: Map<string, string>;
}

/** The folder of package `name` as Node would find it from `fromDir` (ignoring `exports`, which hides package.json). */
function packageDir(name: string, fromDir: string): string {
  for (let dir = fromDir; ; dir = path.dirname(dir)) {
    const candidate = path.join(dir, 'node_modules', name);
    if (fs.existsSync(path.join(candidate, 'package.json'))) return candidate;
    if (path.dirname(dir) === dir) throw new Error(`package ${name} is not installed (looked from ${fromDir})`);
  }
}

function file(files: Map<string, string>, packageName: string, dir: string, inPackage: string): string {
  const absolute = path.join(dir, inPackage);
  if (!fs.statSync(absolute, { throwIfNoEntry: false })?.isFile()) throw new Error(`${packageName} has no ${inPackage} (expected ${absolute})`);
  const relative = `${packageName}/${inPackage}`;
  files.set(relative, absolute);
  return relative;
}

function version(dir: string): string {
  const { version } = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')) as { version: string };
  return version;
}

/** Every native addon of the server, found from `repoRoot`; throws with the reason when one is missing. */
export function findAddons(repoRoot: string): AddonSource[] {
  const { platform, arch } = process;
  const glibc = (process.report.getReport() as { header?: { glibcVersionRuntime?: string } }).header?.glibcVersionRuntime;
  // The prebuilt packages differ by libc; only the glibc ones are handled (and tested) here.
  if (platform !== 'linux' || glibc === undefined) {
    throw new Error(`the single executable is built on Linux with glibc (this is ${platform}${platform === 'linux' ? ' without glibc' : ''})`);
  }
  const addons: AddonSource[] = [];
  const add = (name: AddonName, build: (files: Map<string, string>) => string) => {
    const files = new Map<string, string>();
    addons.push({ name, main: build(files), files });
  };

  add('uws', (files) => {
    // uWebSockets.js ships one binary per platform, arch and Node ABI and picks it by name.
    const dir = packageDir('uWebSockets.js', repoRoot);
    return file(files, 'uWebSockets.js', dir, `binaries/uws_${platform}_${arch}_${process.versions.modules}.node`);
  });
  add('better-sqlite3', (files) => file(files, 'better-sqlite3', packageDir('better-sqlite3', repoRoot), 'build/Release/better_sqlite3.node'));
  add('argon2', (files) => {
    const name = `@node-rs/argon2-${platform}-${arch}-gnu`;
    return file(files, name, packageDir(name, packageDir('@node-rs/argon2', repoRoot)), `argon2.${platform}-${arch}-gnu.node`);
  });
  add('sharp', (files) => {
    const sharp = packageDir('sharp', repoRoot);
    const binaryName = `@img/sharp-${platform}-${arch}`;
    const binaryDir = packageDir(binaryName, sharp);
    const main = file(files, binaryName, binaryDir, `lib/sharp-${platform}-${arch}-${version(sharp)}.node`);
    const libvipsName = `@img/sharp-libvips-${platform}-${arch}`;
    const libvipsDir = packageDir(libvipsName, binaryDir);
    const libraries = fs.readdirSync(path.join(libvipsDir, 'lib')).filter((entry) => /\.so(\.|$)/.test(entry));
    if (libraries.length === 0) throw new Error(`${libvipsName} has no shared library in lib/`);
    for (const library of libraries) file(files, libvipsName, libvipsDir, `lib/${library}`);
    return main;
  });
  return addons;
}
