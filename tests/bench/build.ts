/**
 * Every server of the benchmark runs as its users run it, with plain `node`: ours from the
 * production build (the same bundle `npm start` runs), the baselines as JavaScript. Their entry
 * files are TypeScript: esbuild turns each into one `.mjs` (with its share of baselines/args.ts)
 * and leaves every package outside, to be loaded from node_modules as their users load them.
 */
import fs from 'node:fs';
import path from 'node:path';
import * as esbuild from 'esbuild';
import { bundleServer } from '../../build/bundle.ts';

export interface BenchBuild {
  /** Our server, bundled. */
  server: string;
  /** The folder of the compiled baselines: `<name>.mjs` for `baselines/<name>.ts`. */
  baselines: string;
}

export async function buildForBench(repoRoot: string): Promise<BenchBuild> {
  // Inside the repository, so that both find its node_modules.
  const dir = path.join(repoRoot, '.bench', 'build');
  const server = path.join(dir, 'plexichat.cjs');
  await bundleServer(server);
  const sources = path.join(repoRoot, 'tests', 'bench', 'baselines');
  const baselines = path.join(dir, 'baselines');
  await esbuild.build({
    entryPoints: fs
      .readdirSync(sources)
      .filter((name) => name.endsWith('.ts') && name !== 'args.ts')
      .map((name) => path.join(sources, name)),
    outdir: baselines,
    outExtension: { '.js': '.mjs' },
    bundle: true,
    packages: 'external',
    platform: 'node',
    target: `node${process.versions.node}`,
    // The baselines wait for their servers with top-level await.
    format: 'esm',
    logLevel: 'warning',
  });
  return { server, baselines };
}
