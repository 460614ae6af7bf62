import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { registerUser, runServerToExit, startServer, tempDir, type TestServer, type TestUser } from './helpers/server.ts';
import { captureLog } from './fixtures/log.ts';
import { PlexichatClient } from '../client-lib/index.ts';
import type { ErrorBody, PrivateUser, PublicUser, UserFeatures } from '../shared/index.ts';
import { AccountsAdmin } from '../server/admin/accounts.ts';
import { ConfigError, makeConfig, resolveConfig } from '../server/config.ts';
import { rolloutBucket } from '../server/features/flags.ts';

const UNAUTHORIZED = { error: 'Unauthorized', code: 'unauthorized', message: 'A valid bearer token is required' };

const FEATURES_FILE = {
  flags: {
    always: { default: true },
    never: {},
    pro_only: { tiers: { pro: true } },
    beta: { badges: { beta_tester: true, no_experiments: false }, tiers: { pro: false } },
    half: { rollout: 50 },
    all_rolled: { rollout: 100 },
    none_rolled: { rollout: 0 },
  },
};

/** Gives accounts badges and tiers as `plexichat admin` does (here in-process), telling the server. */
async function administer(srv: TestServer, change: (admin: AccountsAdmin) => void | Promise<void>): Promise<void> {
  const admin = new AccountsAdmin(makeConfig({ dataDir: srv.dataDir, logLevel: 'silent' }), captureLog().logger);
  try {
    await change(admin);
    assert.equal(await admin.notify(), 'confirmed');
  } finally {
    await admin.close();
  }
}

async function featuresOf(srv: TestServer, user: TestUser): Promise<UserFeatures> {
  const res = await srv.api.get<UserFeatures>('/users/@me/features', { token: user.token });
  assert.equal(res.status, 200, res.text);
  return res.body;
}

test('GET /users/@me/features: 401 without a session; a new account has no badge, tier free, and no flag without a features file', async () => {
  const srv = await startServer();
  try {
    const anonymous = await srv.api.get<ErrorBody>('/users/@me/features');
    assert.deepEqual({ status: anonymous.status, body: anonymous.body }, { status: 401, body: UNAUTHORIZED });
    const user = await registerUser(srv.api);
    assert.deepEqual(await featuresOf(srv, user), { badges: [], tier: 'free', flags: {} });
    const client = new PlexichatClient({ baseUrl: srv.url, token: user.token });
    assert.deepEqual(await client.features(), { badges: [], tier: 'free', flags: {} });
  } finally {
    await srv.close();
  }
});

test('flags of --features-file are evaluated per account: badges (false wins), then tier, then rollout, then default', async () => {
  const dir = tempDir();
  const file = path.join(dir, 'features.json');
  fs.writeFileSync(file, JSON.stringify(FEATURES_FILE));
  const srv = await startServer({ featuresFile: file });
  try {
    const plain = await registerUser(srv.api);
    const pro = await registerUser(srv.api);
    const proTester = await registerUser(srv.api);
    const optedOut = await registerUser(srv.api);
    await administer(srv, async (admin) => {
      admin.users.setTier(pro.id, 'pro');
      admin.users.setTier(proTester.id, 'pro');
      await admin.users.addBadge(proTester.id, 'beta_tester');
      await admin.users.addBadge(optedOut.id, 'beta_tester');
      await admin.users.addBadge(optedOut.id, 'no_experiments');
    });
    const expected = (user: TestUser, tier: string, badges: string[], own: { pro_only: boolean; beta: boolean }): UserFeatures => ({
      badges,
      tier,
      flags: { always: true, never: false, ...own, half: rolloutBucket('half', user.id) < 50, all_rolled: true, none_rolled: false },
    });
    assert.deepEqual(await featuresOf(srv, plain), expected(plain, 'free', [], { pro_only: false, beta: false }));
    assert.deepEqual(await featuresOf(srv, pro), expected(pro, 'pro', [], { pro_only: true, beta: false }));
    assert.deepEqual(await featuresOf(srv, proTester), expected(proTester, 'pro', ['beta_tester'], { pro_only: true, beta: true }), 'a badge beats the tier');
    assert.deepEqual(await featuresOf(srv, optedOut), expected(optedOut, 'free', ['beta_tester', 'no_experiments'], { pro_only: false, beta: false }));

    // Badges are in both user objects too; the tier only here.
    const privateUser = (await srv.api.get<PrivateUser>('/users/@me', { token: optedOut.token })).body;
    assert.deepEqual(privateUser.badges, ['beta_tester', 'no_experiments']);
    assert.equal('tier' in privateUser, false);
    const publicUser = (await srv.api.get<PublicUser>(`/users/${proTester.id}`, { token: plain.token })).body;
    assert.deepEqual(publicUser.badges, ['beta_tester']);
  } finally {
    await srv.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a rollout bucket is stable per flag and account, independent between flags, and spreads accounts evenly', () => {
  const ids = Array.from({ length: 2000 }, (_, i) => String(385_000_000_000_000_000n + BigInt(i) * 4_194_304n));
  const inHalf = ids.filter((id) => rolloutBucket('half', id) < 50).length;
  assert.ok(inHalf > 900 && inHalf < 1100, `${inHalf} of 2000 in a 50% rollout`);
  const inTenth = ids.filter((id) => rolloutBucket('tenth', id) < 10);
  assert.ok(inTenth.length > 150 && inTenth.length < 250, `${inTenth.length} of 2000 in a 10% rollout`);
  const overlap = inTenth.filter((id) => rolloutBucket('other', id) < 10).length;
  assert.ok(overlap < 60, `the first 10% of one flag are not those of another (${overlap} shared)`);
  assert.equal(rolloutBucket('half', ids[0]!), rolloutBucket('half', ids[0]!));
  for (const id of ids) assert.ok(rolloutBucket('x', id) >= 0 && rolloutBucket('x', id) < 100);
});

test('a bad features file stops the server with one line naming the setting, the file and the problem', async () => {
  const dir = tempDir();
  try {
    const cases: [string, string][] = [
      ['{"flags": {"new_editor": {"rollout": 101}}}', 'flags.new_editor.rollout: Too big: expected number to be <=100'],
      ['{"flags": {"Bad Name": {}}}', 'flags.Bad Name: Flag names are 1-64 characters'],
      ['{"flag": {}}', 'Unrecognized key: "flag"'],
      ['{"flags": {"x": {"tiers": {"pro": "yes"}}}}', 'flags.x.tiers.pro: Invalid input: expected boolean, received string'],
      ['{"flags": ', 'is not JSON'],
    ];
    for (const [index, [content, message]] of cases.entries()) {
      const file = path.join(dir, `features-${index}.json`);
      fs.writeFileSync(file, content);
      assert.throws(
        () => resolveConfig({ featuresFile: file }, {}),
        (error: unknown) =>
          error instanceof ConfigError &&
          error.message.startsWith(`invalid --features-file / PLEXICHAT_FEATURES_FILE: ${file}`) &&
          error.message.includes(message) &&
          !error.message.includes('\n'),
        content,
      );
    }
    assert.throws(() => resolveConfig({}, { PLEXICHAT_FEATURES_FILE: path.join(dir, 'missing.json') }), /cannot read .*missing\.json: ENOENT/);
    const { code, output } = await runServerToExit(['--port', '0', '--data-dir', dir, '--features-file', path.join(dir, 'features-0.json')]);
    assert.equal(code, 1);
    assert.equal(output.trim().split('\n').length, 1, output);
    assert.match(output, /^plexichat: invalid --features-file \/ PLEXICHAT_FEATURES_FILE: .*rollout: Too big/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
