/**
 * A real `redis-server` for the cluster tests: its own temp folder, a free port, append-only
 * persistence as docs/cluster.md requires, stopped (or killed, or restarted on the same port)
 * by the test. When the machine has no redis-server, `missingRedis` says so in one line and the
 * tests that need it are skipped (`.ci/run` installs it).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

const REDIS_BINARY = 'redis-server';
const START_TIMEOUT_MS = 10_000;

/** Why Redis tests cannot run here, or undefined when they can. */
export function missingRedis(): string | undefined {
  const probe = spawnSync(REDIS_BINARY, ['--version'], { encoding: 'utf8' });
  return probe.error === undefined && probe.status === 0 ? undefined : 'redis-server is not installed (apt-get install redis-server; .ci/run does it)';
}

/** A port nobody listens on right now (the kernel's pick, released for redis-server to take). */
async function freePort(): Promise<number> {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const address = server.address();
  server.close();
  await once(server, 'close');
  if (address === null || typeof address === 'string') throw new Error('no port');
  return address.port;
}

export class RedisServer {
  private child: ChildProcess | undefined;
  private output = '';

  private constructor(
    readonly port: number,
    readonly dir: string,
  ) {}

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  /** The running redis-server's process id (the benchmark reads its CPU and memory in /proc). */
  get pid(): number | undefined {
    return this.child?.pid;
  }

  static async start(): Promise<RedisServer> {
    // Not tests/helpers/server.ts' tempDir: the benchmark uses this helper too, without loading the server.
    const server = new RedisServer(await freePort(), fs.mkdtempSync(path.join(os.tmpdir(), 'plexichat-redis-')));
    await server.run();
    return server;
  }

  /** Starts (again) on the same port and folder: what it persisted comes back. */
  async run(): Promise<void> {
    const child = spawn(
      REDIS_BINARY,
      ['--port', String(this.port), '--bind', '127.0.0.1', '--dir', this.dir, '--appendonly', 'yes', '--appendfsync', 'everysec', '--save', ''],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    this.child = child;
    const killOnExit = () => child.kill('SIGKILL');
    process.once('exit', killOnExit);
    child.once('exit', () => process.removeListener('exit', killOnExit));
    const ready = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`redis-server did not start:\n${this.output}`)), START_TIMEOUT_MS);
      const onData = (chunk: Buffer) => {
        this.output += chunk.toString();
        if (this.output.includes('Ready to accept connections')) {
          clearTimeout(timer);
          resolve();
        }
      };
      child.stdout?.on('data', onData);
      child.stderr?.on('data', onData);
      child.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`redis-server exited with ${code}:\n${this.output}`));
      });
    });
    await ready;
  }

  /** While it is stopped: forgets everything it persisted, as a Redis whose disk was lost. */
  wipe(): void {
    if (this.child !== undefined) throw new Error('stop redis-server before wiping its data');
    for (const entry of fs.readdirSync(this.dir)) fs.rmSync(path.join(this.dir, entry), { recursive: true, force: true });
  }

  /** Stops it (SIGTERM, or SIGKILL to play a crash) and waits for the exit. */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    const child = this.child;
    this.child = undefined;
    if (child === undefined || child.exitCode !== null) return;
    const exited = once(child, 'exit');
    child.kill(signal);
    await exited;
  }

  /**
   * Freezes it (SIGSTOP): the connections stay open and nothing is answered, as when Redis hangs
   * or the network drops packets instead of refusing them. `resume()` thaws it.
   */
  pause(): void {
    this.child?.kill('SIGSTOP');
  }

  resume(): void {
    this.child?.kill('SIGCONT');
  }

  async close(): Promise<void> {
    await this.stop('SIGKILL');
    fs.rmSync(path.join(this.dir), { recursive: true, force: true });
  }
}
