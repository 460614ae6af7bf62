/**
 * esbuild bundles of the server (entry: server/main.ts): one CommonJS file with every dependency
 * inside, so Node starts it without a loader or a module search. Two flavours:
 * - for `npm start` (`dist/plexichat.cjs`): the packages with a native binary stay outside, and
 *   Node finds them in node_modules as usual;
 * - for the single executable: those packages are bundled too, except for the code that finds
 *   their binary, which is replaced by a call to build/sea/unpack.ts (the binary is an asset).
 */
import fs from 'node:fs';
import path from 'node:path';
import * as esbuild from 'esbuild';
import type { AddonName } from './sea/manifest.ts';

const ROOT = path.resolve(import.meta.dirname, '..');
const SERVER_ENTRY = path.join(ROOT, 'server', 'main.ts');
const SEA_ENTRY = path.join(ROOT, 'build', 'sea', 'main.ts');
const UNPACK_MODULE = path.join(ROOT, 'build', 'sea', 'unpack.ts');

/** Packages with a native binary. A new one must be added here and in build/addons.ts. */
const NATIVE_PACKAGES = ['uWebSockets.js', 'better-sqlite3', 'sharp', '@node-rs/argon2'];

const COMMON: esbuild.BuildOptions = {
  bundle: true,
  platform: 'node',
  target: `node${process.versions.node}`,
  format: 'cjs',
  // Readable stack traces: identifiers and lines as written (the size it saves is ~1 MB).
  minify: false,
  legalComments: 'none',
  logLevel: 'silent',
  metafile: true,
};

async function run(options: esbuild.BuildOptions & { outfile: string }): Promise<void> {
  const result = await esbuild.build({ ...COMMON, ...options, write: false });
  // A warning here is a require esbuild could not follow or a package it resolved oddly: in a
  // bundle that would fail only at run time, so it fails the build instead.
  if (result.warnings.length > 0) {
    const text = await esbuild.formatMessages(result.warnings, { kind: 'warning' });
    throw new Error(`the bundle has warnings:\n${text.join('\n')}`);
  }
  const [output] = result.outputFiles;
  if (output === undefined) throw new Error('esbuild wrote no bundle');
  await fs.promises.mkdir(path.dirname(options.outfile), { recursive: true });
  await fs.promises.writeFile(options.outfile, asciiOnly(output.text));
}

/**
 * V8 keeps a script's whole source in memory for as long as it runs, one byte per character if
 * every character fits in Latin-1, else two: one "—" in the 2.5 MB bundle costs 2.5 MB of RSS.
 * esbuild escapes every non-ASCII character of strings, regular expressions and identifiers
 * (its default `charset: 'ascii'`) but copies the comments it keeps as they are. What is left is
 * written as `\uXXXX`: inert text in a comment, and the same character anywhere else.
 */
function asciiOnly(source: string): string {
  return source.replace(/[\u0080-\uffff]/g, (char) => `\\u${char.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/** The server for `npm start`: `outfile` runs with plain `node` beside the repository's node_modules. */
export async function bundleServer(outfile: string): Promise<void> {
  await run({ entryPoints: [SERVER_ENTRY], outfile, external: NATIVE_PACKAGES });
}

/** What replaces each package (or module) that loads a binary: its addon, from the unpacked assets. */
function stubs(): Record<string, string> {
  const load = (name: AddonName) => `require(${JSON.stringify(UNPACK_MODULE)}).loadAddon(${JSON.stringify(name)})`;
  return {
    'uWebSockets.js': `module.exports = ${load('uws')};`,
    '@node-rs/argon2': `module.exports = ${load('argon2')};`,
    // better-sqlite3 asks `bindings` for its binary when the first database is opened.
    bindings: `module.exports = () => ${load('better-sqlite3')};`,
    // sharp's own loader (dist/sharp.cjs) refuses its x64 binary on CPUs older than x86-64-v2.
    sharp: [
      `const sharp = ${load('sharp')};`,
      `if (process.arch === 'x64' && !sharp._isUsingX64V2()) throw new Error('sharp: its prebuilt binary for Linux x64 needs an x86-64-v2 CPU');`,
      'module.exports = sharp;',
    ].join('\n'),
  };
}

function nativeAddonsPlugin(): esbuild.Plugin {
  const namespace = 'plexichat-addon';
  const contents = stubs();
  return {
    name: 'plexichat-native-addons',
    setup(build) {
      build.onResolve({ filter: /^(uWebSockets\.js|@node-rs\/argon2)$/ }, (args) => ({ path: args.path, namespace }));
      build.onResolve({ filter: /^bindings$/ }, (args) =>
        args.importer.includes(`${path.sep}better-sqlite3${path.sep}`)
          ? { path: 'bindings', namespace }
          : { errors: [{ text: `${args.importer} loads a native addon through "bindings", which the single executable does not carry` }] },
      );
      // sharp's CommonJS build: its ES module build makes its `require` from import.meta.url,
      // which a CommonJS bundle does not have.
      build.onResolve({ filter: /^sharp$/ }, async (args) => {
        if (args.kind === 'require-call') return undefined;
        const resolved = await build.resolve('sharp', { kind: 'require-call', resolveDir: args.resolveDir });
        return resolved.errors.length > 0 ? { errors: resolved.errors } : { path: resolved.path };
      });
      build.onLoad({ filter: /[\\/]sharp[\\/]dist[\\/]sharp\.cjs$/ }, () => ({ contents: contents.sharp, resolveDir: ROOT, loader: 'js' }));
      build.onLoad({ filter: /.*/, namespace }, (args) => ({ contents: contents[args.path], resolveDir: ROOT, loader: 'js' }));
    },
  };
}

/**
 * The executable's own `require` loads only Node's built-in modules, and says so with a warning on
 * stderr the first time it is asked for anything else. A few bundled packages try optional modules
 * in a try/catch (sharp its list of library versions, at the first avatar upload): the bundle runs
 * with a `require` that answers those with the usual not-found error, without the warning.
 */
const BUILTINS_ONLY_REQUIRE = `function (id) {
  if (require('node:module').isBuiltin(id)) return require(id);
  throw Object.assign(new Error(\`Cannot find module '\${id}' (the single executable has no other modules)\`), { code: 'MODULE_NOT_FOUND' });
}`;

/** The main script of the single executable: unpacks the addons, then runs the server. */
export async function bundleExecutable(outfile: string): Promise<void> {
  await run({
    entryPoints: [SEA_ENTRY],
    outfile,
    plugins: [nativeAddonsPlugin()],
    banner: { js: '(function (require) {' },
    footer: { js: `})(${BUILTINS_ONLY_REQUIRE});` },
  });
}
