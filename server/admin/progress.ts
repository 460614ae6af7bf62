/**
 * Where a long command reports how far it is (the CLI draws a bar on a terminal, prints plain lines
 * otherwise).
 */
export interface Progress {
  /** A new phase, of about `total` units. */
  start(label: string, total: number, unit: 'bytes' | 'files'): void;
  /** Units done so far in the phase, and the file being worked on. */
  update(done: number, detail: string): void;
  /** The phase is over. */
  stop(): void;
}
