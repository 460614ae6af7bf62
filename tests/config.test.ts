import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { ConfigError, cacheHome, loadConfig } from '../server/config.ts';

test('defaults', () => {
  const config = loadConfig([], {});
  assert.equal(config.port, 8080);
  assert.equal(config.host, '127.0.0.1');
  assert.equal(config.dataDir, path.resolve('./data'));
  assert.equal(config.publicUrl, undefined);
});

test('environment is read and flags win over it', () => {
  const env = { PLEXICHAT_PORT: '9000', PLEXICHAT_HOST: '0.0.0.0', PLEXICHAT_DATA_DIR: '/srv/px', PLEXICHAT_PUBLIC_URL: 'https://chat.example.org/' };
  const fromEnv = loadConfig([], env);
  assert.equal(fromEnv.port, 9000);
  assert.equal(fromEnv.host, '0.0.0.0');
  assert.equal(fromEnv.dataDir, '/srv/px');
  assert.equal(fromEnv.publicUrl, 'https://chat.example.org', 'trailing slash trimmed');
  const flags = loadConfig(['--port', '0', '--data-dir=/tmp/x', '--public-url', 'http://localhost:1'], env);
  assert.equal(flags.port, 0);
  assert.equal(flags.dataDir, '/tmp/x');
  assert.equal(flags.publicUrl, 'http://localhost:1');
});

test('bad values are one clear line', () => {
  const cases: [string[], NodeJS.ProcessEnv, RegExp][] = [
    [['--port', 'abc'], {}, /--port \/ PLEXICHAT_PORT/],
    [['--port', '70000'], {}, /--port/],
    [[], { PLEXICHAT_PORT: '-1' }, /PLEXICHAT_PORT/],
    [['--public-url', 'ftp://x'], {}, /--public-url/],
    [['--nonsense'], {}, /Unknown option '--nonsense'/],
    [['--log-level', 'loud'], {}, /--log-level/],
    [['--max-open-user-files', '1'], {}, /--max-open-user-files/],
  ];
  for (const [argv, env, pattern] of cases) {
    assert.throws(
      () => loadConfig(argv, env),
      (error: unknown) => error instanceof ConfigError && pattern.test(error.message) && !error.message.includes('\n'),
      argv.join(' '),
    );
  }
});

test('avatar limits: defaults, flags and environment, validated', () => {
  const defaults = loadConfig([], {});
  assert.equal(defaults.maxAvatarBytes, 8 * 1024 * 1024);
  assert.equal(defaults.maxAvatarPixels, 40_000_000);
  assert.equal(defaults.maxAvatarFrames, 200);
  assert.equal(defaults.avatarJobs, 2);
  const set = loadConfig(['--max-avatar-bytes', '1048576', '--avatar-jobs', '4'], {
    PLEXICHAT_MAX_AVATAR_PIXELS: '1000000',
    PLEXICHAT_MAX_AVATAR_FRAMES: '50',
  });
  assert.equal(set.maxAvatarBytes, 1_048_576);
  assert.equal(set.maxAvatarPixels, 1_000_000);
  assert.equal(set.maxAvatarFrames, 50);
  assert.equal(set.avatarJobs, 4);
  for (const argv of [
    ['--max-avatar-bytes', '10'],
    ['--max-avatar-pixels', 'lots'],
    ['--max-avatar-frames', '0'],
    ['--avatar-jobs', '0'],
  ]) {
    assert.throws(
      () => loadConfig(argv, {}),
      (error: unknown) => error instanceof ConfigError && error.message.includes(argv[0] as string),
      argv.join(' '),
    );
  }
});

test('session expiry: defaults, flags and environment, validated', () => {
  const defaults = loadConfig([], {});
  assert.equal(defaults.sessionIdleSeconds, 30 * 86_400);
  assert.equal(defaults.sessionLifetimeSeconds, 365 * 86_400);
  const set = loadConfig(['--session-idle-seconds', '3600'], { PLEXICHAT_SESSION_LIFETIME_SECONDS: '86400', PLEXICHAT_SESSION_IDLE_SECONDS: '999999' });
  assert.equal(set.sessionIdleSeconds, 3600, 'the flag wins over the environment');
  assert.equal(set.sessionLifetimeSeconds, 86_400);
  for (const argv of [
    ['--session-idle-seconds', '299'],
    ['--session-lifetime-seconds', '1.5'],
  ]) {
    assert.throws(
      () => loadConfig(argv, {}),
      (error: unknown) => error instanceof ConfigError && error.message.includes(argv[0] as string) && !error.message.includes('\n'),
      argv.join(' '),
    );
  }
});

test('brute-force budgets: defaults, flags and environment, validated', () => {
  const defaults = loadConfig([], {});
  assert.equal(defaults.authRateLimit, 30);
  assert.equal(defaults.loginFailureLimit, 10);
  assert.equal(defaults.loginAccountLimit, 100);
  assert.equal(defaults.searchRateLimit, 30);
  const set = loadConfig(['--login-failure-limit', '0', '--search-rate-limit=5'], { PLEXICHAT_LOGIN_ACCOUNT_LIMIT: '1000', PLEXICHAT_SEARCH_RATE_LIMIT: '7' });
  assert.equal(set.loginFailureLimit, 0);
  assert.equal(set.loginAccountLimit, 1000);
  assert.equal(set.searchRateLimit, 5, 'the flag wins over the environment');
  for (const argv of [['--login-failure-limit=-1'], ['--login-account-limit', 'many'], ['--search-rate-limit', '2.5']]) {
    const flag = (argv[0] as string).split('=')[0] as string;
    assert.throws(
      () => loadConfig(argv, {}),
      (error: unknown) => error instanceof ConfigError && error.message.includes(flag) && !error.message.includes('\n'),
      argv.join(' '),
    );
  }
});

test('cluster links: loopback and any free port by default; every address needs an advertised one', () => {
  const defaults = loadConfig([], {});
  assert.equal(defaults.clusterHost, '127.0.0.1');
  assert.equal(defaults.clusterPort, 0);
  assert.equal(defaults.clusterAdvertise, undefined);
  const fromEnv = loadConfig(['--redis-url', 'redis://10.0.0.5:6379'], {
    PLEXICHAT_CLUSTER_HOST: '0.0.0.0',
    PLEXICHAT_CLUSTER_PORT: '7400',
    PLEXICHAT_CLUSTER_ADVERTISE: 'node-a.internal',
  });
  assert.equal(fromEnv.clusterHost, '0.0.0.0');
  assert.equal(fromEnv.clusterPort, 7400);
  assert.equal(fromEnv.clusterAdvertise, 'node-a.internal');
  const refused: [string[], string][] = [
    [
      ['--redis-url', 'redis://10.0.0.5:6379', '--cluster-host', '::'],
      'invalid --cluster-host / PLEXICHAT_CLUSTER_HOST: listens on every address: set --cluster-advertise to the address the other nodes reach this one at',
    ],
    [['--port', '7400', '--cluster-port', '7400'], 'invalid --cluster-port / PLEXICHAT_CLUSTER_PORT: must differ from --port and --metrics-port'],
    [['--cluster-port', '70000'], 'invalid --cluster-port / PLEXICHAT_CLUSTER_PORT: Too big: expected number to be <=65535'],
  ];
  for (const [argv, message] of refused) {
    assert.throws(
      () => loadConfig(argv, {}),
      (error: unknown) => error instanceof ConfigError && error.message === message,
      argv.join(' '),
    );
  }
  // Without cluster mode the links are never opened: every address is no error there.
  assert.equal(loadConfig(['--cluster-host', '0.0.0.0'], {}).clusterHost, '0.0.0.0');
});

test('the cache folder of the single executable: $XDG_CACHE_HOME when absolute, else ~/.cache', () => {
  assert.equal(cacheHome({ XDG_CACHE_HOME: '/var/cache/px', HOME: '/home/px' }), '/var/cache/px');
  assert.equal(cacheHome({ XDG_CACHE_HOME: 'relative/cache', HOME: '/home/px' }), '/home/px/.cache', 'a relative one is ignored, as the XDG spec says');
  assert.equal(cacheHome({ HOME: '/home/px' }), '/home/px/.cache');
});

test('cluster mode: a --worker-id other than 0 is refused (nodes lease theirs), 0 and a single node are fine', () => {
  const redis = ['--redis-url', 'redis://127.0.0.1:6379'];
  assert.throws(
    () => loadConfig([...redis, '--worker-id', '5'], {}),
    (error: unknown) =>
      error instanceof ConfigError &&
      error.message === 'invalid --worker-id / PLEXICHAT_WORKER_ID: cluster nodes lease their worker id in Redis (docs/cluster.md): leave it unset',
  );
  assert.throws(() => loadConfig([], { PLEXICHAT_REDIS_URL: 'redis://127.0.0.1:6379', PLEXICHAT_WORKER_ID: '7' }), ConfigError);
  assert.equal(loadConfig([...redis, '--worker-id', '0'], {}).workerId, 0);
  assert.equal(loadConfig(['--worker-id', '5'], {}).workerId, 5);
});
