/**
 * `npm run bench [-- --quick] [--json <file>] [--servers a,b] [--scenarios trace,rest,cluster]`
 * Starts our server and the baselines one after another as separate processes on loopback,
 * drives each with the same client code, and prints one table per scenario with our ratio
 * against every baseline. See README, "Benchmarks".
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import cliProgress from 'cli-progress';
import { clusterScenario, clusterSetups, type ClusterParams } from './cluster.ts';
import { fanout, idle, rest, traceAndCold, type Params, type ScenarioName, type ScenarioResult } from './scenarios.ts';
import { checkTargets, ratios, render, renderTargets } from './report.ts';
import { buildForBench } from './build.ts';
import { serverEntries, type ServerEntry } from './servers.ts';
import { loadTrace } from './trace.ts';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
/** Kept in the repository (sources and licences in tests/fixtures/traces/README.md). */
const TRACE_FILE = path.join(repoRoot, 'tests', 'fixtures', 'traces', 'automerge-paper.json.gz');
const SCENARIOS: readonly ScenarioName[] = ['trace', 'cold', 'fanout', 'idle', 'rest', 'cluster'];
const OURS = 'plexichat';

const { values } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    json: { type: 'string' },
    servers: { type: 'string' },
    scenarios: { type: 'string' },
    'cpu-prof': { type: 'string' },
    unpaced: { type: 'boolean', default: false },
    help: { type: 'boolean', default: false },
  },
});
if (values.help) {
  process.stdout.write(
    [
      'npm run bench -- [--quick] [--json <file>] [--servers name,...] [--scenarios trace,cold,fanout,idle,rest,cluster] [--cpu-prof <dir>] [--unpaced]',
      '  --scenarios  which to run (default: all). cluster: the fanout load with each document on three nodes, ours on one',
      '               redis-server (started by the bench; needs redis-server installed) against one node, and against',
      '               three Hocuspocus instances with @hocuspocus/extension-redis',
      '  --servers    which servers (default: all); cluster rows come from plexichat, hocuspocus+sqlite and hocuspocus+redis',
      '',
    ].join('\n'),
  );
  process.exit(0);
}
const quick = values.quick;
const wantedScenarios = new Set<string>(values.scenarios?.split(',') ?? SCENARIOS);
const wantedServers = values.servers === undefined ? null : new Set(values.servers.split(','));
// Every server process writes a V8 CPU profile into this folder when it exits (open in DevTools).
const nodeFlags = values['cpu-prof'] === undefined ? [] : ['--cpu-prof', `--cpu-prof-dir=${path.resolve(values['cpu-prof'])}`];
const entries = serverEntries(await buildForBench(repoRoot), process.env, nodeFlags).filter((entry) => wantedServers === null || wantedServers.has(entry.name));

const trace = loadTrace(TRACE_FILE, quick ? 10_000 : null);
const params: Params = {
  trace,
  fanout: quick ? { docs: 20, clients: 3, edits: 40 } : { docs: 100, clients: 3, edits: 100 },
  idle: quick ? { connections: 200, docs: 20 } : { connections: 1_000, docs: 100 },
  rest: { connections: 50, durationS: quick ? 2 : 10 },
  timeoutMs: quick ? 60_000 : 300_000,
  unpaced: values.unpaced,
};
const clusterParams: ClusterParams = {
  ...(quick ? { docs: 20, edits: 40, warmupEdits: 40, pings: 50 } : { docs: 100, edits: 100, warmupEdits: 100, pings: 200 }),
  timeoutMs: params.timeoutMs,
};
const titles: Record<ScenarioName, string> = {
  trace: `automerge-paper, ${trace.txns.length.toLocaleString('en-US')} of ${trace.totalTxns.toLocaleString('en-US')} updates (one per txn), 1 writer${params.unpaced ? ' (unpaced)' : ''} → 3 readers, until every reader holds the text; settle = from then until a persisting server's CPU is idle (that CPU counts too)`,
  cold: 'SIGTERM after the trace (flush+exit = time to exit), restart, then a fresh client syncs the doc from disk',
  fanout: `${params.fanout.docs} docs × ${params.fanout.clients} clients × ${params.fanout.edits} single-character edits, until all converge (settle as in trace)`,
  idle: `RSS growth per 1,000 idle sync connections (${params.idle.connections} opened) and per 100 docs of 1,000 chars (${params.idle.docs} loaded)`,
  rest: `GET /users/@me, ${params.rest.connections} connections, ${params.rest.durationS} s (autocannon)`,
  cluster: `${clusterParams.docs} docs × 3 devices × ${clusterParams.edits} single-character edits (fanout's load), each doc's devices on nodes 1, 2, 3 of a -cluster/+redis row (3 nodes + redis-server, appendfsync everysec, one shared data folder; CPU and peak RSS summed over all 4 processes) or all on the one node; delivery = ${clusterParams.pings} edits one at a time from node 2 until nodes 1 and 3 hold each`,
};

interface Unit {
  label: string;
  run(): Promise<ScenarioResult[]>;
}

const units: Unit[] = [];
const add = (entry: ServerEntry, scenario: string, run: () => Promise<ScenarioResult[]>) => units.push({ label: `${scenario} · ${entry.name}`, run });
const wants = (entry: ServerEntry, scenario: ScenarioName) => wantedScenarios.has(scenario) && (entry.only === undefined || entry.only.includes(scenario));
for (const entry of entries.filter((candidate) => candidate.sync)) {
  if (wants(entry, 'trace') || wants(entry, 'cold')) {
    add(entry, 'trace+cold', async () => (await traceAndCold(entry, params)).filter((result) => wants(entry, result.scenario)));
  }
  if (wants(entry, 'fanout')) add(entry, 'fanout', async () => [await fanout(entry, params)]);
  if (wants(entry, 'idle')) add(entry, 'idle', async () => [await idle(entry, params)]);
}
for (const entry of entries.filter((candidate) => candidate.rest)) {
  if (wants(entry, 'rest')) add(entry, 'rest', async () => [await rest(entry, params)]);
}
if (wantedScenarios.has('cluster')) {
  for (const setup of clusterSetups(entries)) units.push({ label: `cluster · ${setup.name}`, run: async () => [await clusterScenario(setup, clusterParams)] });
}

const bar = new cliProgress.SingleBar(
  { format: 'bench {bar} {value}/{total} {duration_formatted} {task}', hideCursor: true, clearOnComplete: true },
  cliProgress.Presets.shades_classic,
);
bar.start(units.length, 0, { task: '' });
const results: ScenarioResult[] = [];
const started = Date.now();
for (const unit of units) {
  bar.update({ task: unit.label });
  results.push(...(await unit.run()));
  bar.increment();
}
bar.stop();

const cpus = os.cpus();
const machine = `${cpus.length} cores (${cpus[0]?.model.trim() ?? 'unknown CPU'}), ${Math.round(os.totalmem() / 2 ** 30)} GiB RAM, Linux ${os.release()}, Node ${process.versions.node}`;
const command = ['npm run bench', ...(process.argv.length > 2 ? ['--', ...process.argv.slice(2)] : [])].join(' ');
const allRatios = ratios(results, OURS);
const targets = checkTargets(allRatios);
process.stdout.write(
  `${command} — ${machine}\n\n${render(results, OURS, titles)}\n\n${renderTargets(targets, OURS)}\n\ntotal ${Math.round((Date.now() - started) / 1000)} s\n`,
);
if (values.json !== undefined) {
  const report = {
    date: new Date().toISOString(),
    command,
    machine,
    quick,
    params: { ...params, trace: { updates: trace.txns.length, of: trace.totalTxns }, cluster: clusterParams },
    titles,
    results,
    ratios: allRatios,
    targets,
  };
  fs.writeFileSync(values.json, `${JSON.stringify(report, null, 2)}\n`);
}
process.exit(0);
