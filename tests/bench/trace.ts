import fs from 'node:fs';
import zlib from 'node:zlib';

/** One patch of a sequential editing trace: splice(pos, deleteCount, insertText). */
type Patch = readonly [number, number, string];

export interface Trace {
  /** Transactions replayed (each one update). */
  txns: readonly (readonly Patch[])[];
  /** Transactions in the whole file. */
  totalTxns: number;
  start: string;
  /** The text after the replayed transactions. */
  expected: string;
}

interface TraceFile {
  startContent: string;
  endContent: string;
  txns: { patches: Patch[] }[];
}

function isTraceFile(value: unknown): value is TraceFile {
  if (typeof value !== 'object' || value === null) return false;
  const file = value as Partial<Record<keyof TraceFile, unknown>>;
  return typeof file.startContent === 'string' && typeof file.endContent === 'string' && Array.isArray(file.txns);
}

/** Loads a sequential trace (format in tests/fixtures/traces/README.md), keeping the first `limit` txns. */
export function loadTrace(file: string, limit: number | null): Trace {
  const parsed: unknown = JSON.parse(zlib.gunzipSync(fs.readFileSync(file)).toString('utf8'));
  if (!isTraceFile(parsed)) throw new Error(`${file} is not a sequential editing trace`);
  const all = parsed.txns.map((txn) => txn.patches);
  const txns = limit === null ? all : all.slice(0, limit);
  // Replays the text once as a string, so a prefix has its own expected text and the full trace
  // is checked against the file's endContent before any server is measured.
  let text = parsed.startContent;
  for (const patches of txns) {
    for (const [pos, deleteCount, insert] of patches) {
      text = text.slice(0, pos) + insert + text.slice(pos + deleteCount);
    }
  }
  if (txns.length === all.length && text !== parsed.endContent) throw new Error(`${file}: replay does not reach endContent`);
  return { txns, totalTxns: all.length, start: parsed.startContent, expected: text };
}
