import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';

export interface SequentialTrace {
  startContent: string;
  endContent: string;
  txns: { patches: [number, number, string][] }[];
}

/** An editing trace from `tests/fixtures/traces` (sources, licences and format in its README). */
export function loadTrace(name: string): SequentialTrace {
  const file = path.resolve(import.meta.dirname, '../fixtures/traces', name);
  return JSON.parse(zlib.gunzipSync(fs.readFileSync(file)).toString('utf8')) as SequentialTrace;
}

/** The text after the first `count` transactions, applied like Array.prototype.splice. */
export function textAfter(trace: SequentialTrace, count: number): string {
  let text = trace.startContent;
  for (const txn of trace.txns.slice(0, count)) {
    for (const [pos, del, ins] of txn.patches) text = text.slice(0, pos) + ins + text.slice(pos + del);
  }
  return text;
}
