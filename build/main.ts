/**
 * `npm run build`: `dist/plexichat.cjs`, the server `npm start` runs with plain node.
 * `npm run build:binary`: also `dist/plexichat`, the single executable.
 * `--out <dir>` writes into another folder (the tests build there).
 */
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { buildExecutable } from './binary.ts';
import { bundleServer } from './bundle.ts';

const { values } = parseArgs({ options: { binary: { type: 'boolean', default: false }, out: { type: 'string' } } });
const outDir = path.resolve(values.out ?? path.join(import.meta.dirname, '..', 'dist'));

function report(file: string, started: number): void {
  const mb = fs.statSync(file).size / 1024 / 1024;
  process.stdout.write(`${path.relative(process.cwd(), file) || file}: ${mb.toFixed(1)} MB in ${((performance.now() - started) / 1000).toFixed(1)} s\n`);
}

try {
  let started = performance.now();
  const bundle = path.join(outDir, 'plexichat.cjs');
  await bundleServer(bundle);
  report(bundle, started);
  if (values.binary) {
    started = performance.now();
    report(await buildExecutable(outDir), started);
  }
} catch (error) {
  process.stderr.write(`build failed: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
}
