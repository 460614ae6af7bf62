/**
 * Brute force and abuse: login budgeted per address and per login name (without letting an attacker
 * lock the owner out from another address), search per account and per address, and
 * current_password per account. Client addresses are told apart with X-Forwarded-For from a
 * trusted loopback proxy (`--trust-proxy 127.0.0.1`), and the header is shown ignored without it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadConfig, type Config } from '../server/config.ts';
import { startServer, registerUser, type ApiResponse, type TestServer, type TestUser } from './helpers/server.ts';
import type { AuthResponse, ErrorBody } from '../shared/index.ts';

const INVALID_CREDENTIALS = { error: 'Invalid credentials', code: 'invalid_credentials', message: 'Wrong login or password' };
const INVALID_CURRENT_PASSWORD = {
  error: 'Invalid input',
  code: 'invalid_current_password',
  message: 'current_password is incorrect',
  errors: [{ path: 'current_password', message: 'Incorrect password' }],
};

/** The budgets a server started with no flags has: the tests show the defaults protect. */
const defaults = loadConfig([], {});
const DEFAULT_BUDGETS = {
  authRateLimit: defaults.authRateLimit,
  loginFailureLimit: defaults.loginFailureLimit,
  loginAccountLimit: defaults.loginAccountLimit,
  searchRateLimit: defaults.searchRateLimit,
} satisfies Partial<Config>;

function loginFrom(srv: TestServer, address: string | undefined, login: string, password: string): Promise<ApiResponse<AuthResponse | ErrorBody>> {
  return srv.api.post<AuthResponse | ErrorBody>('/auth/login', {
    json: { login, password },
    headers: address === undefined ? {} : { 'x-forwarded-for': address },
  });
}

/** A 429 is the standard error body; its message names the wait its Retry-After header gives. */
function assertTooMany(res: ApiResponse<unknown>, limit: number, label = ''): void {
  assert.equal(res.status, 429, `${label} ${res.status} ${res.text}`);
  const retryAfter = res.headers.get('retry-after');
  assert.match(retryAfter ?? '', /^[1-9][0-9]*$/, label);
  assert.deepEqual(res.body, { error: 'Too many requests', code: 'too_many_requests', message: `Too many attempts; retry in ${retryAfter} s` }, label);
  assert.equal(res.headers.get('x-ratelimit-limit'), String(limit), label);
  assert.equal(res.headers.get('x-ratelimit-remaining'), '0', label);
  assert.ok(Number(res.headers.get('x-ratelimit-reset')) >= Math.floor(Date.now() / 1000) + Number(retryAfter) - 1, label);
}

test('60 wrong passwords from one address get 429, and the owner still signs in from another (default budgets)', async () => {
  const srv = await startServer({ ...DEFAULT_BUDGETS, trustProxy: ['127.0.0.1'] });
  try {
    const owner = await registerUser(srv.api);
    const attacker = '203.0.113.7';
    const answers: ApiResponse<unknown>[] = [];
    for (let i = 0; i < 60; i += 1) answers.push(await loginFrom(srv, attacker, owner.username, `guess number ${i}`));
    // The first wrong passwords in a row are told so; then the address is refused for that name.
    for (const res of answers.slice(0, defaults.loginFailureLimit))
      assert.deepEqual({ status: res.status, body: res.body }, { status: 401, body: INVALID_CREDENTIALS });
    const refused = answers.slice(defaults.loginFailureLimit);
    assert.equal(refused.length, 50);
    for (const res of refused) assert.equal(res.status, 429);
    assertTooMany(refused[0] as ApiResponse<unknown>, defaults.loginFailureLimit, 'first refusal');
    assert.ok(Number(refused[0]?.headers.get('retry-after')) > 60, 'refused for the rest of the 15 minutes, not a few seconds');
    // Past 30 attempts a minute the address's own budget refuses it too, whatever name it tries.
    assertTooMany(refused.at(-1) as ApiResponse<unknown>, defaults.authRateLimit, 'address budget');

    // A refused attempt never learns whether its password was right.
    const rightButRefused = await loginFrom(srv, attacker, owner.username, owner.password);
    assert.equal(rightButRefused.status, 429);

    const fromHome = await loginFrom(srv, '198.51.100.20', owner.username, owner.password);
    assert.equal(fromHome.status, 200, fromHome.text);
    assert.equal((fromHome.body as AuthResponse).user.id, owner.id);
    const byEmail = await loginFrom(srv, '198.51.100.21', owner.email, owner.password);
    assert.equal(byEmail.status, 200, 'and by email, from yet another address');
  } finally {
    await srv.close();
  }
});

test('without --trust-proxy, X-Forwarded-For is ignored: a forged address does not escape the count', async () => {
  const srv = await startServer({ ...DEFAULT_BUDGETS });
  try {
    const owner = await registerUser(srv.api);
    for (let i = 0; i < defaults.loginFailureLimit; i += 1) {
      const res = await loginFrom(srv, `203.0.113.${i + 1}`, owner.username, `guess ${i}`);
      assert.equal(res.status, 401);
    }
    const forged = await loginFrom(srv, '198.51.100.20', owner.username, owner.password);
    assertTooMany(forged, defaults.loginFailureLimit, 'all of it counted against the real peer');
  } finally {
    await srv.close();
  }
});

test("a right password clears its address's count: only failures in a row are refused", async () => {
  const srv = await startServer({ loginFailureLimit: 3 });
  try {
    const user = await registerUser(srv.api);
    const statuses: number[] = [];
    for (const password of ['wrong 1', 'wrong 2', user.password, 'wrong 3', 'wrong 4', 'wrong 5', 'wrong 6', user.password]) {
      statuses.push((await loginFrom(srv, undefined, user.username, password)).status);
    }
    assert.deepEqual(statuses, [401, 401, 200, 401, 401, 401, 429, 429]);
  } finally {
    await srv.close();
  }
});

test('a login name that is no account is counted exactly like one that is', async () => {
  const srv = await startServer({ loginFailureLimit: 3 });
  try {
    const user = await registerUser(srv.api);
    const answersFor = async (login: string) => {
      const answers: { status: number; body: unknown }[] = [];
      for (let i = 0; i < 5; i += 1) {
        const res = await loginFrom(srv, undefined, login, 'not the password');
        answers.push({ status: res.status, body: res.status === 429 ? (res.body as ErrorBody).code : res.body });
      }
      return answers;
    };
    const real = await answersFor(user.username);
    assert.deepEqual(real, await answersFor('nobody-by-that-name'));
    assert.deepEqual(
      real.map((a) => a.status),
      [401, 401, 401, 429, 429],
    );
    // Counted per name in any case: changing the case does not buy more guesses.
    assert.equal((await loginFrom(srv, undefined, user.username.toUpperCase(), user.password)).status, 429);
  } finally {
    await srv.close();
  }
});

test('many addresses against one account: past its budget only addresses not already failing get through, so the owner still does', async () => {
  const srv = await startServer({ loginAccountLimit: 5, loginFailureLimit: 10, trustProxy: ['127.0.0.1'] });
  try {
    const owner = await registerUser(srv.api);
    // Each attacking address makes 4 attempts: its first 3 are never counted against the
    // account, the 4th is. Five addresses spend the account's budget of 5.
    for (let a = 1; a <= 5; a += 1) {
      for (let i = 0; i < 4; i += 1) {
        const res = await loginFrom(srv, `203.0.113.${a}`, owner.username, `guess ${a}.${i}`);
        assert.equal(res.status, 401, `address ${a}, attempt ${i}`);
      }
    }
    // A sixth address gets its first 3 guesses, then meets the spent account budget.
    const sixth: number[] = [];
    for (let i = 0; i < 4; i += 1) sixth.push((await loginFrom(srv, '203.0.113.6', owner.username, `guess 6.${i}`)).status);
    assert.deepEqual(sixth, [401, 401, 401, 429]);
    const refused = await loginFrom(srv, '203.0.113.1', owner.username, owner.password);
    assertTooMany(refused, 5, 'an address already failing at this name is refused, even with the right password');
    // The owner's device has not been failing: the account's budget does not apply to it.
    const owners = await loginFrom(srv, '198.51.100.20', owner.username, owner.password);
    assert.equal(owners.status, 200, owners.text);
    // Other accounts are not affected at all.
    const bystander = await registerUser(srv.api);
    assert.equal((await loginFrom(srv, '203.0.113.1', bystander.username, bystander.password)).status, 200);
  } finally {
    await srv.close();
  }
});

test('search is budgeted per account, and per address for many accounts', async () => {
  const srv = await startServer({ searchRateLimit: 2, trustProxy: ['127.0.0.1'] });
  try {
    const target = await registerUser(srv.api);
    const search = (user: TestUser, address: string) =>
      srv.api.get(`/users/search?username=${target.username}`, { token: user.token, headers: { 'x-forwarded-for': address } });
    const searcher = await registerUser(srv.api);
    assert.equal((await search(searcher, '203.0.113.1')).status, 200);
    assert.equal((await search(searcher, '203.0.113.2')).status, 200);
    assertTooMany(await search(searcher, '203.0.113.3'), 2, 'the account has used its searches, from any address');

    // Ten times the account budget per address: ten more accounts from one address spend it
    // (the searcher's searches from other addresses do not count there).
    const crowd: TestUser[] = [];
    for (let i = 0; i < 11; i += 1) crowd.push(await registerUser(srv.api));
    for (const user of crowd.slice(0, 10)) {
      assert.equal((await search(user, '198.51.100.9')).status, 200);
      assert.equal((await search(user, '198.51.100.9')).status, 200);
    }
    const last = crowd[10] as TestUser;
    assertTooMany(await search(last, '198.51.100.9'), 20, 'the address has used its searches');
    assert.equal((await search(last, '198.51.100.10')).status, 200, 'the same account from another address');
  } finally {
    await srv.close();
  }
});

test('current_password is limited per account: after the wrong ones in a row even the right one is refused, from any session', async () => {
  const srv = await startServer({ loginFailureLimit: 3 });
  try {
    const owner = await registerUser(srv.api);
    const stolen = (await loginFrom(srv, undefined, owner.username, owner.password)).body as AuthResponse;
    const change = (token: string, currentPassword: string) =>
      srv.api.patch<ErrorBody>('/users/@me', { token, json: { password: 'a brand new passphrase', current_password: currentPassword } });
    for (let i = 0; i < 3; i += 1) {
      const res = await change(stolen.token, `guess ${i}`);
      assert.deepEqual({ status: res.status, body: res.body }, { status: 400, body: INVALID_CURRENT_PASSWORD });
    }
    assertTooMany(await change(stolen.token, owner.password), 3, 'the thief cannot confirm a guess');
    assertTooMany(await change(owner.token, owner.password), 3, "the count is the account's, whichever session asks");
    // The rest of the account works: the owner can still end the thief's session and sign in.
    assert.equal((await srv.api.patch('/users/@me', { token: owner.token, json: { username: `${owner.username}x` } })).status, 200);
    assert.equal((await srv.api.post('/auth/sessions/revoke-others', { token: owner.token })).status, 204);
    assert.equal((await srv.api.get('/users/@me', { token: stolen.token })).status, 401);
    assert.equal((await loginFrom(srv, undefined, owner.email, owner.password)).status, 200);
  } finally {
    await srv.close();
  }
});

test('a right current_password clears the count', async () => {
  const srv = await startServer({ loginFailureLimit: 3 });
  try {
    const user = await registerUser(srv.api);
    const change = (currentPassword: string, password: string) =>
      srv.api.patch<ErrorBody>('/users/@me', { token: user.token, json: { password, current_password: currentPassword } });
    assert.equal((await change('wrong 1', 'next passphrase 1')).status, 400);
    assert.equal((await change('wrong 2', 'next passphrase 1')).status, 400);
    assert.equal((await change(user.password, 'next passphrase 1')).status, 200);
    const statuses: number[] = [];
    for (const guess of ['wrong 3', 'wrong 4', 'wrong 5', 'next passphrase 1']) statuses.push((await change(guess, 'next passphrase 2')).status);
    assert.deepEqual(statuses, [400, 400, 400, 429]);
  } finally {
    await srv.close();
  }
});
