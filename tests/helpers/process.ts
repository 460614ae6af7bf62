/**
 * The one way tests and the benchmark run a server as its own process: ours (`server/main.ts`
 * under tsx, or built), a benchmark baseline, started with `node`, or the single executable;
 * found ready by the line it prints once it listens.
 */
import path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';

/** The repository root, where relative script paths are resolved. */
const REPO_ROOT = path.resolve(import.meta.dirname, '../..');

/** The line a server prints once it listens; group 1 is its URL. Ours logs it inside JSON. */
const LISTENING = /listening on (http:\/\/[^\s"]+)/;

/** The node arguments that run our server from its sources (tsx) with `args`. */
export function ourServerArgs(args: readonly string[]): string[] {
  return ['--import', 'tsx', 'server/main.ts', ...args];
}

export interface NodeProcessOptions {
  /** What follows `node` (or `executable`): its flags, the script, the script's arguments. */
  args: readonly string[];
  /** Run this instead of `node` (the single executable). */
  executable?: string;
  /** The whole environment of the process (default: this one's). */
  env?: NodeJS.ProcessEnv;
  /** A command the process runs under, e.g. `['prlimit', '--nofile=100:100']`. */
  wrapper?: readonly string[];
  /** Default: the repository root. */
  cwd?: string;
  /** Written to the process's standard input, which is then closed (default: no input at all). */
  input?: string;
}

interface Started {
  child: ChildProcess;
  /** Everything printed so far, stdout and stderr in the order it arrived. */
  output(): string;
  /** What was printed on each stream alone. */
  streams(): { stdout: string; stderr: string };
  /** Calls `onLine` with every whole line printed from now on, on either stream. */
  onLine(onLine: (line: string) => void): void;
}

function startNode(options: NodeProcessOptions): Started {
  const command = [...(options.wrapper ?? []), options.executable ?? process.execPath, ...options.args];
  const [file = process.execPath, ...args] = command;
  const child = spawn(file, args, {
    cwd: options.cwd ?? REPO_ROOT,
    env: options.env ?? process.env,
    stdio: [options.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
  });
  if (options.input !== undefined) child.stdin?.end(options.input);
  // A test or benchmark that dies mid-run must not leave servers behind.
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);
  child.once('exit', () => process.removeListener('exit', killOnExit));
  let output = '';
  const separate = { stdout: '', stderr: '' };
  const lineListeners: ((line: string) => void)[] = [];
  for (const [name, stream] of [
    ['stdout', child.stdout],
    ['stderr', child.stderr],
  ] as const) {
    // Lines are split per stream: a chunk may end inside a line, and the two streams interleave.
    let partial = '';
    if (stream === null) throw new Error(`the ${name} of the process is not piped`);
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => {
      output += chunk;
      separate[name] += chunk;
      const lines = (partial + chunk).split('\n');
      partial = lines.pop() ?? '';
      for (const line of lines) for (const listener of lineListeners) listener(line);
    });
  }
  return { child, output: () => output, streams: () => ({ ...separate }), onLine: (listener) => lineListeners.push(listener) };
}

interface Stopped {
  /** Milliseconds from SIGTERM to exit: for persisting servers, the time to flush what they queued. */
  ms: number;
  /** It did not exit within the grace period and was killed (whatever it still held is lost). */
  killed: boolean;
}

export interface ListeningServer {
  child: ChildProcess;
  pid: number;
  /** http://127.0.0.1:<port>, as the server printed it. */
  url: string;
  port: number;
  /** Everything it printed, stdout and stderr in the order it arrived. */
  output(): string;
  /** Its last lines, for error messages. */
  tail(lines?: number): string;
  /** SIGTERM, then wait for exit (SIGKILL after the grace period); tells how it went. */
  stop(graceMs?: number): Promise<Stopped>;
  /** kill -9: no shutdown work at all (what is on disk is what stays). */
  kill(): Promise<void>;
}

export interface ListenOptions extends NodeProcessOptions {
  /** Matches the line that announces the port; group 1 is the URL. Default: "listening on <url>". */
  ready?: RegExp;
  /** Kill it and fail if it has not announced its port by then (default: wait for as long as it runs). */
  timeoutMs?: number;
}

/** Starts a server process and resolves once it printed the URL it listens on. */
export async function startListening(options: ListenOptions): Promise<ListeningServer> {
  const { child, output, onLine } = startNode(options);
  const ready = options.ready ?? LISTENING;
  const tail = (lines = 20) => output().trimEnd().split('\n').slice(-lines).join('\n');
  const url = await new Promise<string>((resolve, reject) => {
    const timer =
      options.timeoutMs === undefined
        ? undefined
        : setTimeout(() => {
            child.kill('SIGKILL');
            reject(new Error(`server did not report its port in time:\n${tail()}`));
          }, options.timeoutMs);
    onLine((line) => {
      const match = ready.exec(line);
      if (match?.[1] === undefined) return;
      clearTimeout(timer);
      resolve(match[1]);
    });
    child.once('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code ?? signal} before listening:\n${output()}`));
    });
  });
  const pid = child.pid;
  if (pid === undefined) throw new Error('server process has no pid');
  return {
    child,
    pid,
    url,
    port: Number(new URL(url).port),
    output,
    tail,
    stop: (graceMs = 20_000) => stopChild(child, graceMs),
    kill: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = once(child, 'exit');
      child.kill('SIGKILL');
      await exited;
    },
  };
}

/** Runs a process that is expected to exit; resolves with its exit code and everything it printed (both streams, and each alone). */
export async function runToExit(options: NodeProcessOptions): Promise<{ code: number | null; output: string; stdout: string; stderr: string }> {
  const { child, output, streams } = startNode(options);
  // 'close', not 'exit': by then both streams are drained, so the output is whole.
  const [code] = (await once(child, 'close')) as [number | null];
  return { code, output: output(), ...streams() };
}

async function stopChild(child: ChildProcess, graceMs: number): Promise<Stopped> {
  if (child.exitCode !== null || child.signalCode !== null) return { ms: 0, killed: false };
  const exited = once(child, 'exit');
  const started = performance.now();
  let killed = false;
  child.kill('SIGTERM');
  const timer = setTimeout(() => {
    killed = true;
    child.kill('SIGKILL');
  }, graceMs);
  await exited;
  clearTimeout(timer);
  return { ms: performance.now() - started, killed };
}
