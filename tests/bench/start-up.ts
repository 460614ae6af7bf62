/**
 * `node --import tsx tests/bench/start-up.ts [--runs N]`: how long our server takes to start, and
 * what it holds once it serves, in each way it is run: from the sources under tsx (`npm run dev`),
 * from the production bundle with plain node (`npm start`), and as the single executable, on its
 * first start (the cache folder emptied before every run: the addons are unpacked) and on later
 * ones (every file checked by hash, none written). Also the size of the executable and of what it
 * unpacks. Each start is timed from spawn to the line announcing the port (the server listens:
 * everything has been loaded and the data folder opened); RSS is read after a first GET /health.
 * Builds into .bench/start-up (inside the repository, so that the bundle finds node_modules) and
 * removes it at the end.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { buildExecutable } from '../../build/binary.ts';
import { bundleServer } from '../../build/bundle.ts';
import type { Manifest } from '../../build/sea/manifest.ts';
import { startListening, type ListenOptions } from '../helpers/process.ts';
import { sample } from './proc.ts';

const repoRoot = path.resolve(import.meta.dirname, '..', '..');
const { values } = parseArgs({ options: { runs: { type: 'string', default: '10' } } });
const runs = Number(values.runs);
if (!Number.isInteger(runs) || runs < 1) throw new Error('--runs must be a positive integer');

const out = path.join(repoRoot, '.bench', 'start-up');
fs.rmSync(out, { recursive: true, force: true });
const bundle = path.join(out, 'plexichat.cjs');
await bundleServer(bundle);
const executable = await buildExecutable(out);
const manifest = JSON.parse(fs.readFileSync(path.join(out, 'sea', 'manifest.json'), 'utf8')) as Manifest;
const unpackedBytes = Object.values(manifest.addons)
  .flatMap((addon) => addon.files)
  .reduce((sum, file) => sum + file.size, 0);

const home = fs.mkdtempSync(path.join(os.tmpdir(), 'plexichat-start-up-'));
const data = path.join(home, 'data');
const cache = path.join(home, 'cache');
fs.mkdirSync(data);
const args = ['--port', '0', '--data-dir', data, '--log-level', 'info'];
// The executable as a self-hoster runs it: no node on PATH, no node_modules in reach.
const bareEnv = { PATH: path.join(home, 'no-bin'), HOME: home, XDG_CACHE_HOME: cache };

const mb = (bytes: number) => `${(bytes / 1024 / 1024).toFixed(1)} MB`;
const median = (sorted: number[]) => sorted[Math.floor(sorted.length / 2)] ?? Number.NaN;

async function measure(label: string, options: ListenOptions, beforeEach?: () => void): Promise<void> {
  const ms: number[] = [];
  const rss: number[] = [];
  for (let run = 0; run < runs; run += 1) {
    beforeEach?.();
    const started = performance.now();
    const server = await startListening({ timeoutMs: 60_000, ...options });
    ms.push(performance.now() - started);
    const health = await fetch(`${server.url}/health`);
    await health.body?.cancel();
    rss.push(sample(server.pid).rssBytes);
    await server.stop();
  }
  ms.sort((a, b) => a - b);
  rss.sort((a, b) => a - b);
  process.stdout.write(
    `${label.padEnd(34)} ${median(ms).toFixed(0).padStart(5)} ms (${(ms[0] ?? 0).toFixed(0)}–${(ms.at(-1) ?? 0).toFixed(0)})   RSS ${mb(median(rss))}\n`,
  );
}

try {
  process.stdout.write(
    `executable ${mb(fs.statSync(executable).size)} (node ${mb(fs.statSync(process.execPath).size)}, addons it unpacks ${mb(unpackedBytes)})\n`,
  );
  process.stdout.write(`median of ${runs} starts, spawn → listening (fastest–slowest), RSS after the first GET /health:\n`);
  await measure('tsx server/main.ts (npm run dev)', { args: ['--import', 'tsx', path.join(repoRoot, 'server', 'main.ts'), ...args] });
  await measure('node plexichat.cjs (npm start)', { args: [bundle, ...args] });
  await measure('executable, first start (unpacks)', { executable, args, env: bareEnv, cwd: home }, () => fs.rmSync(cache, { recursive: true, force: true }));
  await measure('executable, later starts', { executable, args, env: bareEnv, cwd: home });
} finally {
  fs.rmSync(home, { recursive: true, force: true });
  // The executable and its intermediate files: ~160 MB.
  fs.rmSync(out, { recursive: true, force: true });
}
