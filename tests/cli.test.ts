import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { Api, registerUser, runCommand, spawnServer, tempDir } from './helpers/server.ts';
import { runCli } from '../server/cli/index.ts';

/** Runs the CLI in this process with its own streams: for help and argument errors, which need no server. */
async function cli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number | undefined; stdout: string; stderr: string }> {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let out = '';
  let err = '';
  stdout.on('data', (chunk: Buffer) => {
    out += chunk.toString();
  });
  stderr.on('data', (chunk: Buffer) => {
    err += chunk.toString();
  });
  const code = await runCli(args, { stdout, stderr, stdin: new PassThrough(), env });
  return { code, stdout: out, stderr: err };
}

/** Every command and command group of the CLI, as typed. */
const COMMANDS = [
  [],
  ['serve'],
  ['admin'],
  ['admin', 'user'],
  ['admin', 'user', 'create'],
  ['admin', 'user', 'list'],
  ['admin', 'user', 'delete'],
  ['admin', 'user', 'reset-password'],
  ['admin', 'user', 'export'],
  ['admin', 'user', 'import'],
  ['admin', 'badge'],
  ['admin', 'badge', 'add'],
  ['admin', 'badge', 'remove'],
  ['admin', 'tier'],
  ['admin', 'tier', 'set'],
  ['admin', 'verify-email'],
  ['admin', 'age-verify'],
  ['backup'],
  ['restore'],
  ['doctor'],
];

test('--help on every command prints its usage on stdout and exits 0', async () => {
  for (const command of COMMANDS) {
    const { code, stdout, stderr } = await cli([...command, '--help']);
    assert.equal(code, 0, command.join(' '));
    assert.equal(stderr, '', command.join(' '));
    assert.match(stdout, new RegExp(`^Usage: plexichat${command.map((word) => ` ${word}`).join('')} `), command.join(' '));
    // Every command that touches a data folder says how to name it.
    if (command.length > 0 && !['admin', 'serve'].includes(command.at(-1) ?? '') && !(command.length === 2 && command[0] === 'admin')) {
      assert.match(stdout, /--data-dir <dir>/, command.join(' '));
    }
  }
  const serve = await cli(['serve', '--help']);
  for (const flag of ['--port', '--data-dir', '--features-file', '--smtp-url']) assert.match(serve.stdout, new RegExp(`${flag} <value>`));
  assert.equal((await cli(['help', 'admin', 'user'])).code, 0);
});

test('errors are one line on stderr, exit code 1, and nothing on stdout', async () => {
  const dir = tempDir();
  try {
    const cases: [string[], string][] = [
      [['frobnicate'], "plexichat: unknown command 'frobnicate' (commands: serve, admin, backup, restore, doctor, help; see plexichat --help)"],
      [['--nonsense'], "plexichat: unknown option '--nonsense'"],
      [['serve', '--port', 'nope'], 'plexichat: invalid --port / PLEXICHAT_PORT: Invalid input: expected number, received NaN'],
      [['admin', 'user', 'nope'], "plexichat: unknown command 'nope'"],
      [['admin', 'badge', 'add', 'someone'], "plexichat: missing required argument 'badge'"],
      [['admin', 'user', 'list', 'extra'], "plexichat: too many arguments for 'list'. Expected 0 arguments but got 1."],
      [['doctor', '--data-dir', dir], `plexichat: no Plexichat data folder at ${dir} (no directory.sqlite): check --data-dir`],
      [['backup', path.join(dir, 'out'), '--data-dir', dir], `plexichat: no Plexichat data folder at ${dir} (no directory.sqlite): check --data-dir`],
      [['restore', dir, '--data-dir', path.join(dir, 'target')], `plexichat: ${dir} has no manifest.json: it is not a finished Plexichat backup`],
    ];
    for (const [args, message] of cases) {
      const { code, stdout, stderr } = await cli(args);
      assert.deepEqual({ code, stdout, stderr }, { code: 1, stdout: '', stderr: `${message}\n` }, args.join(' '));
    }
    // The environment is read as the server reads it, and flags win over it.
    const fromEnv = await cli(['admin', 'user', 'list'], { PLEXICHAT_DATA_DIR: dir });
    assert.equal(fromEnv.stderr, `plexichat: no Plexichat data folder at ${dir} (no directory.sqlite): check --data-dir\n`);
    assert.deepEqual(fs.readdirSync(dir), [], 'no command made a data folder where there was none');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("`serve` runs the server, admin commands run beside it, and bare flags are serve's (a second server on the folder is refused)", async () => {
  const dir = tempDir();
  try {
    const server = await spawnServer(['serve', '--port', '0', '--data-dir', dir, '--log-level', 'warn']);
    try {
      const user = await registerUser(new Api(server.url));
      const listed = await runCommand(['admin', 'user', 'list', '--data-dir', dir]);
      assert.equal(listed.code, 0, listed.output);
      assert.match(
        listed.stdout,
        new RegExp(`^ID +USERNAME +EMAIL +CREATED +VERIFIED +2FA +TIER +BADGES\\n${user.id} +${user.username} +${user.email} .* free +-\\n1 account\\n$`),
      );
      assert.equal(listed.stderr, '');
      // A second server on the same data folder is refused before it touches a file.
      const second = await runCommand(['--port', '0', '--data-dir', dir]);
      assert.equal(second.code, 1);
      assert.match(second.stderr, /^plexichat: cannot start: another Plexichat server is running on the data folder .*\n$/);
    } finally {
      const stopped = await server.stop();
      assert.equal(stopped.killed, false);
      assert.equal(server.child.exitCode, 0);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
