import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { type Api, registerUser, runCommand, startServer, tempDir, type TestUser } from './helpers/server.ts';
import { notesChannelOf } from './helpers/sync.ts';
import { compareSnowflakes, type AuthResponse, type Message } from '../shared/index.ts';

/**
 * backup, restore and doctor as self-hosters run them: real processes of the CLI against the data
 * folder of a running server.
 */

/** Every note of a channel, oldest first (the API pages newest first, 100 at a time). */
async function allNotes(api: Api, token: string, channel: string): Promise<string[]> {
  const notes: Message[] = [];
  for (let before: string | undefined; ; ) {
    const query = before === undefined ? '' : `&before=${before}`;
    const page = await api.get<Message[]>(`/channels/${channel}/messages?limit=100${query}`, { token });
    assert.equal(page.status, 200, page.text);
    notes.push(...page.body);
    if (page.body.length < 100) break;
    before = page.body.at(-1)?.id;
  }
  return notes.sort((a, b) => compareSnowflakes(a.id, b.id)).map((note) => note.content);
}

function signIn(api: Api, login: string, password: string) {
  return api.post<AuthResponse>('/auth/login', { json: { login, password } });
}

test('a backup taken during a burst of writes opens, passes doctor, and restores into a server that serves every user and every acknowledged update', async () => {
  const srv = await startServer();
  const scratch = tempDir();
  const backupDir = path.join(scratch, 'backup');
  const restoredDir = path.join(scratch, 'restored');
  try {
    const users: TestUser[] = [];
    for (let i = 0; i < 10; i += 1) users.push(await registerUser(srv.api));
    const channels = await Promise.all(users.map((user) => notesChannelOf(srv.api, user)));

    // The burst: every account writes note after note (a 201 is the acknowledgement: the note is
    // stored before it is answered), while accounts register and rename themselves beside it.
    const acked = users.map(() => 0);
    let writing = true;
    let warmedUp!: () => void;
    const warm = new Promise<void>((resolve) => {
      warmedUp = resolve;
    });
    const writers = users.map(async (user, i) => {
      for (let n = 0; writing; n += 1) {
        const res = await srv.api.post(`/channels/${channels[i]}/messages`, { token: user.token, json: { content: `${i}:${n}` } });
        assert.equal(res.status, 201, res.text);
        acked[i] = n + 1;
        if (acked.every((count) => count >= 5)) warmedUp();
      }
    });
    const late: TestUser[] = [];
    const churn = (async () => {
      for (let n = 0; writing; n += 1) {
        if (n % 2 === 0) late.push(await registerUser(srv.api));
        else {
          const user = users[n % users.length] as TestUser;
          const renamed = await srv.api.patch('/users/@me', { token: user.token, json: { username: `${user.username.slice(0, 20)}_${n}` } });
          assert.equal(renamed.status, 200, renamed.text);
        }
      }
    })();
    await warm;

    const before = [...acked];
    const [backup, liveDoctor] = await Promise.all([
      runCommand(['backup', backupDir, '--data-dir', srv.dataDir]),
      runCommand(['doctor', '--data-dir', srv.dataDir]),
    ]);
    const after = [...acked];
    writing = false;
    await Promise.all([...writers, churn]);

    assert.equal(backup.code, 0, backup.output);
    assert.match(backup.stdout, /^backed up \d+ account\(s\), \d+ files \(.*\) to .*backup\n$/);
    // Not a terminal: plain progress lines on stderr, the result alone on stdout.
    assert.match(backup.stderr, /^backup: .* to go\n/);
    assert.match(backup.stderr, /\nbackup: done \(.*\)\n/);
    assert.ok(after.reduce((a, b) => a + b, 0) > before.reduce((a, b) => a + b, 0), 'writes were acknowledged while the backup ran');
    assert.equal(liveDoctor.code, 0, liveDoctor.output);
    assert.match(liveDoctor.stdout, /no problem found\n$/);

    const manifest = JSON.parse(fs.readFileSync(path.join(backupDir, 'manifest.json'), 'utf8')) as {
      users: number;
      files: { path: string; kind: string; bytes: number; sha256: string; schema_version: number }[];
    };
    assert.ok(manifest.users >= users.length);
    assert.deepEqual(
      manifest.files.slice(0, 2).map((file) => file.path),
      ['directory.sqlite', 'ids.sqlite'],
    );
    for (const file of manifest.files) {
      assert.equal(fs.statSync(path.join(backupDir, file.path)).size, file.bytes, file.path);
      assert.match(file.sha256, /^[0-9a-f]{64}$/);
      assert.ok(file.schema_version > 0);
    }

    // The backup is a data folder in itself: doctor finds it sound (and leaves it as it was: the
    // restore below checks every file against its SHA-256).
    const checked = await runCommand(['doctor', '--data-dir', backupDir]);
    assert.equal(checked.code, 0, checked.output);
    const restored = await runCommand(['restore', backupDir, '--data-dir', restoredDir]);
    assert.equal(restored.code, 0, restored.output);
    assert.match(restored.stdout, /^restored \d+ account\(s\), \d+ files, backed up at .*, into /);

    const again = await startServer({ dataDir: restoredDir });
    try {
      for (const [i, user] of users.entries()) {
        const res = await signIn(again.api, user.email, user.password);
        assert.equal(res.status, 200, `${user.email}: ${res.text}`);
        const notes = await allNotes(again.api, res.body.token, channels[i] as string);
        // What a restore brings back of a writer: the first k notes, in order, for a k at least what
        // was acknowledged when the backup started (a prefix: never a hole).
        assert.deepEqual(
          notes,
          Array.from({ length: notes.length }, (_, n) => `${i}:${n}`),
          `${user.email}: a prefix of what was written`,
        );
        assert.ok(notes.length >= (before[i] ?? 0), `${user.email}: ${notes.length} notes, ${before[i]} acknowledged before the backup`);
        assert.ok(notes.length <= (after[i] ?? 0) + 1, `${user.email}: no note from after the backup`);
      }
      for (const user of late) {
        // Registered while the backup ran: in it or not, but never half there.
        const status = (await signIn(again.api, user.email, user.password)).status;
        assert.ok(status === 200 || status === 401, `${user.email}: ${status}`);
      }
      const newcomer = await registerUser(again.api);
      const ids = [...users, ...late].map((user) => user.id);
      assert.ok(
        ids.every((id) => compareSnowflakes(newcomer.id, id) > 0),
        'ids go on after every id in the backup',
      );
    } finally {
      await again.close();
    }
  } finally {
    await srv.close();
    fs.rmSync(scratch, { recursive: true, force: true });
  }
});

test('restore goes only into an empty folder, and only from an intact backup', async () => {
  const srv = await startServer();
  const scratch = tempDir();
  try {
    await registerUser(srv.api);
    const backupDir = path.join(scratch, 'backup');
    const made = await runCommand(['backup', backupDir, '--data-dir', srv.dataDir]);
    assert.equal(made.code, 0, made.output);
    const tampered = path.join(scratch, 'tampered');
    fs.cpSync(backupDir, tampered, { recursive: true });
    const userFile = fs.readdirSync(path.join(tampered, 'users'))[0] as string;
    const bytes = fs.readFileSync(path.join(tampered, 'users', userFile));
    bytes[bytes.length - 10] = (bytes[bytes.length - 10] ?? 0) ^ 0xff;
    fs.writeFileSync(path.join(tampered, 'users', userFile), bytes);
    const target = path.join(scratch, 'target');

    const [intoLive, fromTampered, intoBackup] = await Promise.all([
      runCommand(['restore', backupDir, '--data-dir', srv.dataDir]),
      runCommand(['restore', tampered, '--data-dir', target]),
      runCommand(['backup', backupDir, '--data-dir', srv.dataDir]),
    ]);
    const lastLine = (text: string) => text.split('\n').at(-2);
    assert.deepEqual([intoLive.code, lastLine(intoLive.stderr)], [1, `plexichat: ${srv.dataDir} is not empty: restore into a new or empty folder only`]);
    assert.deepEqual(
      [fromTampered.code, lastLine(fromTampered.stderr)],
      [1, `plexichat: users/${userFile} is not the file the backup wrote (size or SHA-256 differs from the manifest): the backup is damaged`],
    );
    assert.equal(fs.existsSync(path.join(target, 'directory.sqlite')), false, 'nothing written');
    assert.deepEqual([intoBackup.code, lastLine(intoBackup.stderr)], [1, `plexichat: ${backupDir} is not empty: back up into a new or empty folder only`]);
  } finally {
    await srv.close();
    fs.rmSync(scratch, { recursive: true, force: true });
  }
});

test('doctor finds a corrupted file and an index that disagrees with the user files, says what to do, and --fix repairs the index', async () => {
  let srv = await startServer();
  const dataDir = srv.dataDir;
  const scratch = tempDir();
  let damaged: TestUser;
  let unindexed: TestUser;
  let renamed: TestUser;
  try {
    damaged = await registerUser(srv.api);
    unindexed = await registerUser(srv.api);
    renamed = await registerUser(srv.api);
    // The damaged account gets long notes, so its file has pages to break beyond the first few.
    const channel = await notesChannelOf(srv.api, damaged);
    for (let i = 0; i < 12; i += 1) {
      const res = await srv.api.post(`/channels/${channel}/messages`, { token: damaged.token, json: { content: String.fromCharCode(97 + i).repeat(4000) } });
      assert.equal(res.status, 201, res.text);
    }
  } finally {
    await srv.server.close();
  }
  try {
    const file = path.join(dataDir, 'users', `${damaged.id}.sqlite`);
    const bytes = fs.readFileSync(file);
    assert.ok(bytes.length >= 8 * 4096, `${bytes.length} bytes`);
    bytes.fill(0x5a, 3 * 4096, 6 * 4096);
    fs.writeFileSync(file, bytes);
    const directory = new Database(path.join(dataDir, 'directory.sqlite'));
    directory.prepare('DELETE FROM users WHERE id = ?').run(unindexed.id);
    directory.prepare("UPDATE users SET username = 'someone_else', username_lower = 'someone_else' WHERE id = ?").run(renamed.id);
    directory.close();

    const found = await runCommand(['doctor', '--data-dir', dataDir]);
    assert.equal(found.code, 1, found.output);
    const lines = found.stdout.split('\n');
    const damagedPath = `users/${damaged.id}.sqlite`;
    assert.ok(
      lines.some((line) => line.startsWith(`problem: ${damagedPath}: `) && /integrity check|malformed|cannot be read/.test(line)),
      found.stdout,
    );
    assert.ok(
      lines.includes(`problem: users/${unindexed.id}.sqlite (${unindexed.username}) has no entry in the directory's users index: it is no account`),
      found.stdout,
    );
    assert.ok(
      lines.includes(`problem: users/${renamed.id}.sqlite: the index says username "someone_else", the file says ${JSON.stringify(renamed.username)}`),
      found.stdout,
    );
    assert.ok(lines.some((line) => line.startsWith(`fix: ${damagedPath} is damaged: stop the server, then put the same file from a backup in its place`)));
    assert.ok(lines.some((line) => line.startsWith("fix: plexichat doctor --fix derives the directory's users index again from the user files")));

    const refused = await runCommand(['doctor', '--fix', '--data-dir', dataDir]);
    assert.equal(refused.code, 1);
    assert.equal(
      refused.stderr.split('\n').at(-2),
      `plexichat: ${damagedPath} is damaged: repair or move it first (see the fixes above), then run plexichat doctor --fix again`,
    );

    // As the fix says: the damaged file moves out of users/, then --fix derives the index again.
    fs.renameSync(file, path.join(scratch, 'damaged.sqlite'));
    const fixed = await runCommand(['doctor', '--fix', '--data-dir', dataDir]);
    assert.equal(fixed.code, 0, fixed.output);
    assert.match(fixed.stdout, /fixed: derived the users index again: 2 accounts, 1 rows without a file removed\n/);
    assert.match(fixed.stdout, /no problem found\n$/);

    srv = await startServer({ dataDir });
    assert.equal((await signIn(srv.api, unindexed.username, unindexed.password)).status, 200, 'the unindexed account is one again');
    assert.equal((await signIn(srv.api, renamed.username, renamed.password)).status, 200, 'by the name in its file');
    assert.equal((await signIn(srv.api, 'someone_else', renamed.password)).status, 401);
  } finally {
    await srv.close();
    fs.rmSync(scratch, { recursive: true, force: true });
  }
});
