import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { registerUser, startServer, tempDir } from './helpers/server.ts';
import { makePng } from './helpers/images.ts';
import { outboxMail, tokenIn } from './helpers/mail.ts';
import { captureLog } from './fixtures/log.ts';

const run = promisify(execFile);

/** The `curl` commands of the API reference, in the order they appear (continuation lines joined, comments dropped). */
function curlExamples(markdown: string): string[] {
  const commands: string[] = [];
  for (const block of markdown.matchAll(/```sh\n([\s\S]*?)```/g)) {
    const joined = (block[1] as string).replace(/\\\n\s*/g, ' ');
    for (const line of joined.split('\n')) {
      const command = line.replace(/\s{2,}#.*$/, '').trim();
      if (command.startsWith('curl ')) commands.push(command);
    }
  }
  return commands;
}

test('every example of docs/api.md runs as written, in order, against a real server', { timeout: 60_000 }, async (t) => {
  try {
    execFileSync('curl', ['--version'], { stdio: 'ignore' });
  } catch {
    t.skip('needs curl on PATH to run the documented examples');
    return;
  }
  const commands = curlExamples(fs.readFileSync(path.resolve(import.meta.dirname, '../docs/api.md'), 'utf8'));
  assert.ok(commands.length >= 20, `found ${commands.length} examples`);
  // The log says when a mail is in the outbox: the examples that need a code from a mail wait for it.
  const log = captureLog();
  const srv = await startServer({}, { logger: log.logger });
  const cwd = tempDir('plexichat-docs-');
  try {
    fs.writeFileSync(path.join(cwd, 'avatar.png'), await makePng());
    const other = await registerUser(srv.api, 'janedoe');
    const env: Record<string, string> = { ...process.env, OTHER_ID: other.id } as Record<string, string>;
    let registeredEmail = '';
    for (const command of commands) {
      const mark = log.records.length;
      const local = command.replaceAll('http://127.0.0.1:8080', srv.url);
      const out = path.join(cwd, 'answer');
      // Asynchronously: the server answering runs in this process.
      const { stdout: status } = await run('bash', ['-c', `${local} -sS -o '${out}' -w '%{http_code}'`], { cwd, env, encoding: 'utf8' });
      const body = fs.readFileSync(out, 'utf8');
      assert.ok(Number(status) >= 200 && Number(status) < 400, `${command}\n→ ${status} ${body.slice(0, 300)}`);
      // The variables the reference says later examples use, taken from the answers that give them.
      if (command.includes('/auth/register')) {
        const answer = JSON.parse(body) as { token: string; user: { id: string; email: string } };
        env.TOKEN = answer.token;
        env.USER_ID = answer.user.id;
        registeredEmail = answer.user.email;
        // Its verification mail, so that no later mark can be taken before it is written.
        await outboxMail(log, mark, registeredEmail, 'verify-email');
      } else if (command.includes('/auth/sessions') && !command.includes('-X ')) {
        env.SESSION = (JSON.parse(body) as { id: string; current: boolean }[]).find((session) => !session.current)?.id ?? '';
      } else if (command.includes('/auth/verify-email/resend')) {
        env.VERIFY_TOKEN = tokenIn(await outboxMail(log, mark, registeredEmail, 'verify-email'), 'pxv_');
      } else if (command.includes('/auth/password/forgot')) {
        const email = /"email":"([^"]+)"/.exec(command)?.[1] ?? '';
        env.RESET_TOKEN = tokenIn(await outboxMail(log, mark, email, 'reset-password'), 'pxr_');
      } else if (command.includes('/users/@me/notes')) {
        env.CHANNEL = (JSON.parse(body) as { id: string }).id;
      } else if (command.includes('-X POST') && command.includes('/messages')) {
        env.MESSAGE = (JSON.parse(body) as { id: string }).id;
      }
    }
  } finally {
    await srv.close();
    fs.rmSync(cwd, { recursive: true, force: true });
  }
});
