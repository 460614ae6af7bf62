/**
 * The single executable (Node's Single Executable Applications): a copy of the `node` binary that
 * runs this build with the bundle of build/sea/main.ts as its main script, and the native addons
 * (with sharp's libvips) as assets, unpacked at run time by build/sea/unpack.ts.
 */
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { findAddons } from './addons.ts';
import { bundleExecutable } from './bundle.ts';
import { type Addon, type AddonName, MANIFEST_ASSET, type Manifest } from './sea/manifest.ts';

const ROOT = path.resolve(import.meta.dirname, '..');
/** The marker postject flips in the node binary so that it looks for the injected blob. */
const SEA_FUSE = 'NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2';

function sha256(file: string): string {
  return crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

/** The manifest, and every asset: its key → the file it is read from. */
function collectAddons(): { manifest: Manifest; assets: Map<string, string> } {
  const { version } = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string };
  const assets = new Map<string, string>();
  const addons: Partial<Record<AddonName, Addon>> = {};
  for (const source of findAddons(ROOT)) {
    const files = [...source.files].map(([relative, absolute]) => {
      assets.set(relative, absolute);
      return { path: relative, size: fs.statSync(absolute).size, sha256: sha256(absolute) };
    });
    addons[source.name] = { main: source.main, files };
  }
  const { uws, 'better-sqlite3': sqlite, argon2, sharp } = addons;
  if (uws === undefined || sqlite === undefined || argon2 === undefined || sharp === undefined) throw new Error('an addon is missing from build/addons.ts');
  const all = { uws, 'better-sqlite3': sqlite, argon2, sharp };
  // The folder is named by what it holds: a build whose addons differ never reuses another's files.
  const digest = crypto.createHash('sha256').update(JSON.stringify(all)).digest('hex').slice(0, 16);
  return { manifest: { id: `${version}-${digest}`, addons: all }, assets };
}

/** Runs `node <args>` to completion; throws with its output if it fails. */
function node(args: string[]): void {
  const result = spawnSync(process.execPath, args, { cwd: ROOT, encoding: 'utf8' });
  if (result.status !== 0) {
    throw new Error(`node ${args.join(' ')} failed (${result.error?.message ?? `exit ${result.status ?? result.signal}`}):\n${result.stdout}${result.stderr}`);
  }
}

/** Writes the executable to `<outDir>/plexichat` (its intermediate files go to `<outDir>/sea/`); returns its path. */
export async function buildExecutable(outDir: string): Promise<string> {
  const work = path.join(outDir, 'sea');
  fs.mkdirSync(work, { recursive: true });
  const { manifest, assets } = collectAddons();
  const manifestFile = path.join(work, 'manifest.json');
  fs.writeFileSync(manifestFile, JSON.stringify(manifest, null, 2));
  const main = path.join(work, 'main.cjs');
  await bundleExecutable(main);

  const blob = path.join(work, 'sea-prep.blob');
  const config = path.join(work, 'sea-config.json');
  const seaConfig = {
    main,
    output: blob,
    disableExperimentalSEAWarning: true,
    // V8's compile cache for the main script, made by this same node: a faster start.
    useCodeCache: true,
    assets: Object.fromEntries([[MANIFEST_ASSET, manifestFile], ...assets]),
  };
  fs.writeFileSync(config, JSON.stringify(seaConfig, null, 2));
  node(['--experimental-sea-config', config]);

  // Built next to its final name and renamed once whole: a failed build leaves no half executable.
  const executable = path.join(outDir, 'plexichat');
  const partial = `${executable}.partial`;
  fs.copyFileSync(process.execPath, partial);
  fs.chmodSync(partial, 0o755);
  const require = createRequire(import.meta.url);
  const postject = require.resolve('postject/dist/cli.js');
  node([postject, partial, 'NODE_SEA_BLOB', blob, '--sentinel-fuse', SEA_FUSE]);
  fs.renameSync(partial, executable);
  return executable;
}
