/**
 * Baseline for REST: what a team would write instead of us — Fastify 5 + better-sqlite3 serving
 * `GET /users/@me` with the same work per request as ours: SHA-256 of the bearer token, a session
 * lookup by hash, a profile row read, the same private user object as JSON.
 */
import crypto from 'node:crypto';
import path from 'node:path';
import Database from 'better-sqlite3';
import Fastify from 'fastify';
import { FASTIFY_BENCH_TOKEN, announce, baselineArgs } from './args.ts';

interface SessionRow {
  user_id: string;
}

interface UserRow {
  id: string;
  username: string;
  email: string;
  created_at: number;
  email_verified: number;
  totp_enabled: number;
  age_verified: number;
  badges: string;
}

const { port, dataDir } = baselineArgs();
if (dataDir === undefined) throw new Error('--data-dir is required');
const db = new Database(path.join(dataDir, 'fastify.sqlite'));
db.pragma('journal_mode = WAL');
db.pragma('synchronous = NORMAL');
db.exec(`
  CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY, username TEXT NOT NULL, email TEXT NOT NULL, created_at INTEGER NOT NULL,
    email_verified INTEGER NOT NULL DEFAULT 0, totp_enabled INTEGER NOT NULL DEFAULT 0,
    age_verified INTEGER NOT NULL DEFAULT 0, badges TEXT NOT NULL DEFAULT '[]'
  ) STRICT;
  CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY, token_hash BLOB NOT NULL UNIQUE, user_id TEXT NOT NULL REFERENCES users(id)
  ) STRICT;
`);
const sha256 = (token: string) => crypto.createHash('sha256').update(token).digest();
db.prepare('INSERT OR IGNORE INTO users (id, username, email, created_at) VALUES (?, ?, ?, ?)').run(
  '1000000000000000001',
  'bench',
  'bench@example.com',
  Math.floor(Date.now() / 1000),
);
db.prepare('INSERT OR IGNORE INTO sessions (id, token_hash, user_id) VALUES (?, ?, ?)').run(
  '1000000000000000002',
  sha256(FASTIFY_BENCH_TOKEN),
  '1000000000000000001',
);
const findSession = db.prepare<[Buffer], SessionRow>('SELECT user_id FROM sessions WHERE token_hash = ?');
const readUser = db.prepare<[string], UserRow>('SELECT * FROM users WHERE id = ?');

const app = Fastify({ logger: false });
app.get('/users/@me', async (request, reply) => {
  const header = request.headers.authorization ?? '';
  const session = header.startsWith('Bearer ') ? findSession.get(sha256(header.slice(7))) : undefined;
  const user = session === undefined ? undefined : readUser.get(session.user_id);
  if (user === undefined) {
    return reply.code(401).send({ error: 'Unauthorized', code: 'unauthorized', message: 'Missing or invalid token' });
  }
  return {
    id: user.id,
    username: user.username,
    email: user.email,
    avatar_url: null,
    created_at: user.created_at,
    email_verified: user.email_verified === 1,
    totp_enabled: user.totp_enabled === 1,
    age_verified: user.age_verified === 1,
    badges: JSON.parse(user.badges) as unknown,
  };
});
await app.listen({ port, host: '127.0.0.1' });
const address = app.server.address();
announce(typeof address === 'object' && address !== null ? address.port : port);
process.on('SIGTERM', () => {
  void app.close().then(() => {
    db.close();
    process.exit(0);
  });
});
