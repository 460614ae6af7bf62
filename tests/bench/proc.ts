import fs from 'node:fs';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import readline from 'node:readline';

/** Clock ticks per second of /proc/<pid>/stat times; 100 on every Linux we run on (getconf CLK_TCK). */
const CLOCK_TICKS_PER_S = 100;

export interface ProcSample {
  /** utime + stime of the process, in microseconds. */
  cpuUs: number;
  /** Resident set size now (VmRSS), bytes. */
  rssBytes: number;
  /** Peak resident set size since start or the last resetPeak (VmHWM), bytes. */
  peakRssBytes: number;
}

export function sample(pid: number): ProcSample {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) may hold spaces and parentheses: fields are counted after the last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const utime = Number(fields[11]);
  const stime = Number(fields[12]);
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  return {
    cpuUs: ((utime + stime) * 1_000_000) / CLOCK_TICKS_PER_S,
    rssBytes: statusKb(status, 'VmRSS') * 1024,
    peakRssBytes: statusKb(status, 'VmHWM') * 1024,
  };
}

function statusKb(status: string, key: string): number {
  const match = new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status);
  return match?.[1] === undefined ? 0 : Number(match[1]);
}

/**
 * Resets VmHWM to the current RSS, so a scenario's peak excludes its setup (registrations hash
 * passwords with Argon2, which would otherwise dominate our peak). Returns false where the kernel
 * refuses, in which case the peak is the process lifetime's.
 */
export function resetPeak(pid: number): boolean {
  try {
    fs.writeFileSync(`/proc/${pid}/clear_refs`, '5');
    return true;
  } catch {
    return false;
  }
}

export interface ServerProcess {
  pid: number;
  /** http://127.0.0.1:<port> */
  url: string;
  port: number;
  /** Last lines of stderr and stdout, for error messages. */
  tail(): string;
  /** SIGTERM, then wait for exit (SIGKILL after the grace period); tells how it went. */
  stop(graceMs?: number): Promise<Stopped>;
  /** kill -9: no shutdown work at all (what is on disk is what stays). */
  kill(): Promise<void>;
}

interface Stopped {
  /** Milliseconds from SIGTERM to exit: for persisting servers, the time to flush what they queued. */
  ms: number;
  /** It did not exit within the grace period and was killed (whatever it still held is lost). */
  killed: boolean;
}

export interface SpawnOptions {
  args: readonly string[];
  cwd: string;
  env?: NodeJS.ProcessEnv;
  /** Matches the line that announces the port; group 1 is the URL `http://host:port`. */
  ready: RegExp;
  timeoutMs?: number;
}

/** Starts a server process and resolves once it printed its listening URL. */
export async function spawnServer(options: SpawnOptions): Promise<ServerProcess> {
  const child = spawn(process.execPath, options.args, {
    cwd: options.cwd,
    env: options.env ?? process.env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  // A harness that dies mid-run must not leave servers behind.
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);
  child.once('exit', () => process.removeListener('exit', killOnExit));
  const lines: string[] = [];
  const remember = (line: string) => {
    lines.push(line);
    if (lines.length > 20) lines.shift();
  };
  const stderr = readline.createInterface({ input: child.stderr! });
  stderr.on('line', remember);
  const stdout = readline.createInterface({ input: child.stdout! });
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`server did not report its port in time: ${lines.join('\n')}`));
    }, options.timeoutMs ?? 30_000);
    stdout.on('line', (line) => {
      remember(line);
      const match = options.ready.exec(line);
      if (match?.[1] !== undefined) {
        clearTimeout(timer);
        resolve(match[1]);
      }
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`server exited (${code ?? signal}) before listening: ${lines.join('\n')}`));
    });
  });
  const pid = child.pid;
  if (pid === undefined) throw new Error('server process has no pid');
  return {
    pid,
    url,
    port: Number(new URL(url).port),
    tail: () => lines.join('\n'),
    stop: (graceMs = 20_000) => stopChild(child, graceMs),
    kill: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = once(child, 'exit');
      child.kill('SIGKILL');
      await exited;
    },
  };
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
