import cliProgress from 'cli-progress';
import type { Progress } from '../admin/progress.ts';

/** Where a command reads and writes: the process's streams, or a test's. */
export interface CliIo {
  stdout: NodeJS.WritableStream & { isTTY?: boolean };
  stderr: NodeJS.WritableStream & { isTTY?: boolean };
  stdin: NodeJS.ReadableStream & { isTTY?: boolean; setRawMode?: (mode: boolean) => unknown };
  /** The environment settings fall back to (default: the process's, read by server/config.ts). */
  env?: NodeJS.ProcessEnv;
}

/** A failure a command reports as one line (`plexichat: <message>`) and exit code 1. */
export class CliError extends Error {}

/** Ends a command with this exit code and nothing more to say (it said it already). */
export class CliExit extends Error {
  constructor(readonly code: number) {
    super(`exit ${code}`);
  }
}

export function line(stream: NodeJS.WritableStream, text: string): void {
  stream.write(`${text}\n`);
}

/**
 * A password for `admin user create` / `reset-password`. Never an argument: other users of the
 * machine can read a process's arguments. With `--password-stdin`, the first line of standard
 * input; otherwise typed at a terminal, unechoed, twice.
 */
export async function readPassword(io: CliIo, fromStdin: boolean): Promise<string> {
  if (fromStdin) {
    const text = await readAll(io.stdin);
    const password = text.replace(/\r?\n$/, '');
    if (password.includes('\n')) throw new CliError('--password-stdin takes one line: the password');
    return password;
  }
  if (io.stdin.isTTY !== true || io.stdin.setRawMode === undefined) {
    throw new CliError('no terminal to type the password at: give it on standard input with --password-stdin');
  }
  const first = await promptHidden(io, 'New password: ');
  const second = await promptHidden(io, 'Again: ');
  if (first !== second) throw new CliError('the two passwords differ');
  return first;
}

async function readAll(stream: NodeJS.ReadableStream): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(typeof chunk === 'string' ? Buffer.from(chunk) : chunk);
  return Buffer.concat(chunks).toString('utf8');
}

/** Reads one line at the terminal without echoing it (raw mode: Enter ends it, Ctrl-C cancels). */
function promptHidden(io: CliIo, question: string): Promise<string> {
  const { stdin } = io;
  io.stderr.write(question);
  return new Promise((resolve, reject) => {
    let typed = '';
    const finish = (error?: Error) => {
      stdin.setRawMode?.(false);
      stdin.removeListener('data', onData);
      stdin.pause();
      io.stderr.write('\n');
      if (error) reject(error);
      else resolve(typed);
    };
    const onData = (chunk: Buffer | string) => {
      for (const char of chunk.toString()) {
        if (char === '\r' || char === '\n') return finish();
        if (char === '\u0003') return finish(new CliError('cancelled'));
        if (char === '\u007f' || char === '\b') typed = typed.slice(0, -1);
        else typed += char;
      }
    };
    stdin.setRawMode?.(true);
    stdin.resume();
    stdin.on('data', onData);
  });
}

/** Bytes as people read them: 1.2 MiB. */
export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${bytes} B` : `${value.toFixed(1)} ${units[unit]}`;
}

/** Plain progress lines at most this often (a log or a pipe wants lines, not a bar). */
const PLAIN_INTERVAL_MS = 1000;

/**
 * Progress on standard error: a bar (cli-progress) on a terminal; otherwise plain lines, one when a
 * phase starts, at most one a second while it runs, and one when it ends. Standard output keeps
 * only the result.
 */
export function progressOn(io: CliIo): Progress {
  const format = (unit: 'bytes' | 'files', value: number) => (unit === 'bytes' ? formatBytes(value) : `${value} files`);
  if (io.stderr.isTTY === true) {
    let bar: cliProgress.SingleBar | undefined;
    let unit: 'bytes' | 'files' = 'bytes';
    let total = 0;
    return {
      start(label, phaseTotal, phaseUnit) {
        unit = phaseUnit;
        total = phaseTotal;
        bar = new cliProgress.SingleBar(
          { stream: io.stderr, format: `${label.padEnd(7)} [{bar}] {percentage}% | {amount} | {detail}`, hideCursor: true },
          cliProgress.Presets.shades_classic,
        );
        bar.start(Math.max(phaseTotal, 1), 0, { amount: `0 of ${format(unit, total)}`, detail: '' });
      },
      update(done, detail) {
        bar?.update(Math.min(done, Math.max(total, 1)), { amount: `${format(unit, done)} of ${format(unit, total)}`, detail });
      },
      stop() {
        bar?.stop();
        bar = undefined;
      },
    };
  }
  let label = '';
  let unit: 'bytes' | 'files' = 'bytes';
  let total = 0;
  let last = 0;
  let latest = 0;
  return {
    start(phaseLabel, phaseTotal, phaseUnit) {
      label = phaseLabel;
      unit = phaseUnit;
      total = phaseTotal;
      latest = 0;
      last = Date.now();
      line(io.stderr, `${label}: ${format(unit, total)} to go`);
    },
    update(done, detail) {
      latest = done;
      if (Date.now() - last < PLAIN_INTERVAL_MS) return;
      last = Date.now();
      const percent = total === 0 ? 100 : Math.floor((100 * done) / total);
      line(io.stderr, `${label}: ${percent}% (${format(unit, done)} of ${format(unit, total)}), at ${detail}`);
    },
    stop() {
      line(io.stderr, `${label}: done (${format(unit, latest)})`);
    },
  };
}
