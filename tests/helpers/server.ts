import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { createServer, type RunningServer, type ServerOptions } from '../../server/app.ts';
import { makeConfig, type Config } from '../../server/config.ts';
import type { AuthResponse } from '../../shared/index.ts';
import { ourServerArgs, runToExit, startListening, type ListeningServer } from './process.ts';

export interface TestServer {
  url: string;
  dataDir: string;
  server: RunningServer;
  api: Api;
  close(): Promise<void>;
}

export function tempDir(prefix = 'plexichat-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/**
 * The brute-force budgets, off in test servers (suites register and sign in many times from one
 * address); the suites about them turn them on.
 */
const NO_THROTTLES = { authRateLimit: 0, loginFailureLimit: 0, loginAccountLimit: 0, searchRateLimit: 0 } as const satisfies Partial<Config>;

/** A real server on port 0 with a fresh data folder (or the given one), removed on close. */
export async function startServer(overrides: Partial<Config> = {}, options: ServerOptions = {}): Promise<TestServer> {
  const ownDir = overrides.dataDir === undefined;
  const dataDir = overrides.dataDir ?? tempDir();
  const server = await createServer(makeConfig({ port: 0, logLevel: 'silent', ...NO_THROTTLES, ...overrides, dataDir }), options);
  return {
    url: server.url,
    dataDir,
    server,
    api: new Api(server.url),
    async close() {
      await server.close();
      if (ownDir) fs.rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

export interface ApiResponse<T = unknown> {
  status: number;
  headers: Headers;
  body: T;
  text: string;
}

export interface RequestOptions {
  token?: string;
  json?: unknown;
  /** Sent as it is (for malformed bodies). */
  raw?: string | Uint8Array;
  headers?: Record<string, string>;
}

/** A tiny HTTP client for tests: real fetch against the real server. */
export class Api {
  constructor(readonly baseUrl: string) {}

  async request<T = unknown>(method: string, path: string, options: RequestOptions = {}): Promise<ApiResponse<T>> {
    const headers: Record<string, string> = { ...options.headers };
    if (options.token !== undefined) headers.authorization = `Bearer ${options.token}`;
    let body: string | Uint8Array | undefined;
    if (options.json !== undefined) {
      body = JSON.stringify(options.json);
      headers['content-type'] ??= 'application/json';
    } else if (options.raw !== undefined) {
      body = options.raw;
    }
    const response = await fetch(this.baseUrl + path, { method, headers, body });
    const text = await response.text();
    let parsed: unknown = text;
    if ((response.headers.get('content-type') ?? '').includes('json') && text !== '') parsed = JSON.parse(text);
    return { status: response.status, headers: response.headers, body: parsed as T, text };
  }

  get<T = unknown>(path: string, options?: RequestOptions) {
    return this.request<T>('GET', path, options);
  }
  post<T = unknown>(path: string, options?: RequestOptions) {
    return this.request<T>('POST', path, options);
  }
  patch<T = unknown>(path: string, options?: RequestOptions) {
    return this.request<T>('PATCH', path, options);
  }
  delete<T = unknown>(path: string, options?: RequestOptions) {
    return this.request<T>('DELETE', path, options);
  }
}

export interface TestUser {
  id: string;
  token: string;
  username: string;
  email: string;
  password: string;
}

/** Registers a fresh user with a unique name; fails the test if that does not answer 201. */
export async function registerUser(api: Api, name?: string): Promise<TestUser> {
  // 40 random bits: unique among the users of a run without a counter kept in the module.
  const username = name ?? `user${process.pid}_${randomBytes(5).toString('hex')}`;
  const email = `${username.toLowerCase()}@example.com`;
  const password = `pw-${username}-secret`;
  const response = await api.post<AuthResponse>('/auth/register', { json: { username, email, password } });
  if (response.status !== 201) throw new Error(`register ${username}: ${response.status} ${response.text}`);
  return { id: response.body.user.id, token: response.body.token, username, email, password };
}

/** A server process of `spawnServer`: `child`, `url` and `output()`, and more (see ListeningServer). */
export type ServerProcess = ListeningServer;

/**
 * Runs `server/main.ts` as its own process (for signals, kill -9 and start-up checks); resolves
 * once it listens. `env` is added to this process's environment. `wrapper` is a command the server
 * runs under, e.g. `['prlimit', '--nofile=100:100']`.
 */
export function spawnServer(args: string[], env: NodeJS.ProcessEnv = {}, wrapper: string[] = []): Promise<ServerProcess> {
  return startListening({ args: ourServerArgs(args), env: { ...process.env, ...env }, wrapper });
}

/** One node of a cluster as its own process (for kill -9 and SIGSTOP), logging warnings and errors. */
export function spawnClusterNode(options: { dataDir: string; redisUrl: string; nodeId: string; leaseMs: number }): Promise<ServerProcess> {
  const { dataDir, redisUrl, nodeId, leaseMs } = options;
  return spawnServer([
    '--port',
    '0',
    '--data-dir',
    dataDir,
    '--redis-url',
    redisUrl,
    '--node-id',
    nodeId,
    '--lease-ms',
    String(leaseMs),
    '--log-level',
    'warn',
  ]);
}

/** Runs main.ts expecting it to exit; resolves with its exit code and everything it printed. */
export function runServerToExit(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; output: string }> {
  return runToExit({ args: ourServerArgs(args), env: { ...process.env, ...env } });
}

/**
 * Runs a command of the CLI as its own process (`node --import tsx server/main.ts <args>`), with
 * `input` on its standard input; resolves with its exit code and what it printed, per stream too.
 */
export function runCommand(args: string[], options: { input?: string; env?: NodeJS.ProcessEnv } = {}) {
  return runToExit({ args: ourServerArgs(args), env: { ...process.env, ...options.env }, ...(options.input === undefined ? {} : { input: options.input }) });
}
