import type { ScenarioName, ScenarioResult } from './scenarios.ts';

interface MetricInfo {
  key: string;
  label: string;
  better: 'lower' | 'higher';
  digits: number;
}

const m = (key: string, label: string, better: 'lower' | 'higher', digits: number): MetricInfo => ({ key, label, better, digits });

/** The columns of each scenario, in print order. */
const METRICS: Record<ScenarioName, MetricInfo[]> = {
  trace: [
    m('wall_s', 'wall s', 'lower', 2),
    m('settle_s', 'settle s', 'lower', 1),
    m('updates_per_s', 'updates/s', 'higher', 0),
    m('cpu_us_per_update', 'CPU µs/update', 'lower', 1),
    m('peak_rss_mb', 'peak RSS MB', 'lower', 0),
  ],
  fanout: [
    m('wall_s', 'wall s', 'lower', 2),
    m('settle_s', 'settle s', 'lower', 1),
    m('updates_per_s', 'updates/s', 'higher', 0),
    m('cpu_us_per_update', 'CPU µs/update', 'lower', 1),
    m('peak_rss_mb', 'peak RSS MB', 'lower', 0),
  ],
  cold: [
    m('stop_s', 'flush+exit s', 'lower', 2),
    m('wall_ms', 'wall ms', 'lower', 0),
    m('cpu_ms', 'CPU ms', 'lower', 0),
    m('peak_rss_mb', 'peak RSS MB', 'lower', 0),
  ],
  idle: [
    m('rss_mb_per_1000_conns', 'RSS MB/1000 conns', 'lower', 1),
    m('rss_mb_per_100_docs', 'RSS MB/100 docs', 'lower', 1),
    m('rss_mb', 'RSS MB', 'lower', 0),
  ],
  rest: [
    m('req_per_s', 'req/s', 'higher', 0),
    m('p99_ms', 'p99 ms', 'lower', 1),
    m('cpu_us_per_req', 'CPU µs/req', 'lower', 1),
    m('peak_rss_mb', 'peak RSS MB', 'lower', 0),
  ],
  cluster: [
    m('wall_s', 'wall s', 'lower', 2),
    m('settle_s', 'settle s', 'lower', 1),
    m('updates_per_s', 'updates/s', 'higher', 0),
    m('cpu_us_per_update', 'CPU µs/update', 'lower', 1),
    m('redis_cpu_us_per_update', 'of it Redis', 'lower', 1),
    m('cold_cpu_us_per_update', 'cold CPU µs/update', 'lower', 1),
    m('peak_rss_mb', 'peak RSS MB', 'lower', 0),
    m('delivery_p50_ms', 'delivery p50 ms', 'lower', 2),
    m('delivery_p99_ms', 'delivery p99 ms', 'lower', 2),
  ],
};

/**
 * Whose figures a scenario's ratios are of: ours, except in `cluster`, where they are of our
 * three nodes (`<ours>-cluster`), and our single node is one of the rows they are compared with.
 */
function oursIn(scenario: ScenarioName, ours: string): string {
  return scenario === 'cluster' ? `${ours}-cluster` : ours;
}

export interface Ratio {
  scenario: ScenarioName;
  baseline: string;
  /** ours ÷ baseline per metric; for "higher is better" metrics above 1 is good, else below 1. */
  ratios: Record<string, number>;
}

export function ratios(results: readonly ScenarioResult[], ours: string): Ratio[] {
  const out: Ratio[] = [];
  for (const ourResult of results.filter((result) => result.server === oursIn(result.scenario, ours) && result.status === 'ok')) {
    // Our own variants (e.g. `plexichat-log`) are rows of their own, not baselines.
    for (const other of results.filter(
      (result) =>
        result.scenario === ourResult.scenario && result.server !== ourResult.server && !result.server.startsWith(`${ours}-`) && result.status === 'ok',
    )) {
      const values: Record<string, number> = {};
      for (const metric of METRICS[ourResult.scenario]) {
        const mine = ourResult.metrics[metric.key];
        const theirs = other.metrics[metric.key];
        if (mine !== undefined && theirs !== undefined && theirs !== 0) values[metric.key] = mine / theirs;
      }
      out.push({ scenario: ourResult.scenario, baseline: other.server, ratios: values });
    }
  }
  return out;
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, column) => Math.max(...rows.map((row) => (row[column] ?? '').length)));
  return rows
    .map((row) =>
      row
        .map((cell, column) => (column === 0 ? cell.padEnd(widths[column]!) : cell.padStart(widths[column]!)))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

function format(value: number | undefined, digits: number): string {
  if (value === undefined || !Number.isFinite(value)) return '—';
  return value.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

/** One plain-text table per scenario: each server's figures, then our ratio against each baseline. */
export function render(results: readonly ScenarioResult[], ours: string, titles: Record<ScenarioName, string>): string {
  const sections: string[] = [];
  const allRatios = ratios(results, ours);
  for (const scenario of Object.keys(METRICS) as ScenarioName[]) {
    const rows = results.filter((result) => result.scenario === scenario);
    if (rows.length === 0) continue;
    const metrics = METRICS[scenario];
    const body: string[][] = [['server', ...metrics.map((metric) => metric.label)]];
    const notes: string[] = [];
    for (const row of rows) {
      if (row.status === 'ok') {
        body.push([row.server, ...metrics.map((metric) => format(row.metrics[metric.key], metric.digits))]);
      } else {
        body.push([`${row.server} (${row.status})`, ...metrics.map(() => '—')]);
        notes.push(`  ${row.server} ${row.status}: ${row.note ?? ''}`);
      }
    }
    const ratioRows = allRatios.filter((ratio) => ratio.scenario === scenario);
    if (ratioRows.length > 0) {
      for (const ratio of ratioRows) {
        body.push([
          `${oursIn(scenario, ours)} ÷ ${ratio.baseline}`,
          ...metrics.map((metric) => (ratio.ratios[metric.key] === undefined ? '—' : `${format(ratio.ratios[metric.key], 2)}×`)),
        ]);
      }
    } else {
      notes.push(`  no ratio: ${oursIn(scenario, ours)} has no result in this scenario`);
    }
    sections.push(`${scenario}: ${titles[scenario]}\n${table(body)}${notes.length > 0 ? `\n${notes.join('\n')}` : ''}`);
  }
  return sections.join('\n\n');
}

/** A goal of an issue (7, or 14 for the cluster): ours ÷ baseline on one metric, at most (or at least) `bound`. */
interface Target {
  issue: number;
  scenario: ScenarioName;
  metric: string;
  baseline: string;
  bound: number;
  kind: 'max' | 'min';
}

const target = (scenario: ScenarioName, metric: string, baseline: string, kind: 'max' | 'min', bound: number): Target => ({
  issue: scenario === 'cluster' ? 14 : 7,
  scenario,
  metric,
  baseline,
  kind,
  bound,
});

/** Benchmark goals, reported (never asserted by `npm test`). */
const TARGETS: readonly Target[] = [
  ...(['trace', 'fanout'] as const).flatMap((scenario) => [
    target(scenario, 'cpu_us_per_update', 'y-websocket', 'max', 1.0),
    target(scenario, 'cpu_us_per_update', 'y-websocket+leveldb', 'max', 0.5),
    target(scenario, 'cpu_us_per_update', 'hocuspocus+sqlite', 'max', 0.25),
    target(scenario, 'peak_rss_mb', 'hocuspocus+sqlite', 'max', 0.5),
    target(scenario, 'peak_rss_mb', 'y-websocket', 'max', 1.0),
    ...['y-websocket', 'y-websocket+leveldb', 'hocuspocus+sqlite', 'uws-relay'].map((baseline) => target(scenario, 'wall_s', baseline, 'max', 1.0)),
  ]),
  target('cold', 'wall_ms', 'y-websocket+leveldb', 'max', 1.0),
  target('rest', 'req_per_s', 'uws-hello', 'min', 0.5),
  target('rest', 'req_per_s', 'fastify+sqlite', 'min', 2.0),
  // Issue 14: three nodes cost at most twice one node per update, and less than Hocuspocus on Redis.
  target('cluster', 'cpu_us_per_update', 'plexichat', 'max', 2.0),
  target('cluster', 'cpu_us_per_update', 'hocuspocus+redis', 'max', 1.0),
];

export interface TargetOutcome extends Target {
  ratio: number | null;
  met: boolean | null;
}

export function checkTargets(allRatios: readonly Ratio[]): TargetOutcome[] {
  return TARGETS.map((goal) => {
    const ratio = allRatios.find((candidate) => candidate.scenario === goal.scenario && candidate.baseline === goal.baseline)?.ratios[goal.metric];
    if (ratio === undefined) return { ...goal, ratio: null, met: null };
    return { ...goal, ratio, met: goal.kind === 'max' ? ratio <= goal.bound : ratio >= goal.bound };
  });
}

/** One table per issue; issue 14's (the cluster) only when the cluster scenario measured anything. */
export function renderTargets(outcomes: readonly TargetOutcome[], ours: string): string {
  const blocks: string[] = [];
  for (const issue of [...new Set(outcomes.map((outcome) => outcome.issue))]) {
    const mine = outcomes.filter((outcome) => outcome.issue === issue);
    if (issue !== 7 && mine.every((outcome) => outcome.ratio === null)) continue;
    const rows: string[][] = [['target', 'measured', '']];
    for (const outcome of mine) {
      const label = METRICS[outcome.scenario].find((metric) => metric.key === outcome.metric)?.label ?? outcome.metric;
      rows.push([
        `${outcome.scenario} ${label}: ${oursIn(outcome.scenario, ours)} ${outcome.kind === 'max' ? '≤' : '≥'} ${outcome.bound.toFixed(2)}× ${outcome.baseline}`,
        outcome.ratio === null ? '—' : `${format(outcome.ratio, 2)}×`,
        outcome.met === null ? 'not measured' : outcome.met ? 'met' : 'MISSED',
      ]);
    }
    blocks.push(`targets (issue ${issue})\n${table(rows)}`);
  }
  return blocks.join('\n\n');
}
