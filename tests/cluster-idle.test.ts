/**
 * Cluster mode: an owner gives up a user nobody used through it for `--idle-release-ms`
 * (docs/cluster.md, "Release"), and a request another node relays to it counts as a use, as one
 * that reached it directly does. Real redis-server, nodes in this process.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { withCluster } from './helpers/cluster.ts';
import { missingRedis } from './helpers/redis.ts';
import { type Api, registerUser } from './helpers/server.ts';
import { within } from './helpers/sync.ts';

const skip = missingRedis();
const LEASE_MS = 1500;
const IDLE_RELEASE_MS = 1000;

async function ownedUsers(api: Api): Promise<number> {
  return (await api.get<{ owned_users: number }>('/health')).body.owned_users;
}

test('a user served only through requests relayed from another node stays with its owner; once nobody uses them, the owner gives them up after --idle-release-ms', {
  skip,
  timeout: 60_000,
}, async () => {
  await withCluster('plexichat-idle-', async ({ startNode }) => {
    const a = await startNode('a', LEASE_MS, {}, { idleReleaseMs: IDLE_RELEASE_MS });
    const b = await startNode('b', LEASE_MS, {}, { idleReleaseMs: IDLE_RELEASE_MS });
    // Registered through a: a owns the new user.
    const user = await registerUser(a.api);
    assert.equal(await ownedUsers(a.api), 1);
    // Four idle bounds of requests through b only, each relayed to a: a must keep the user (had
    // it given them up, the next relayed request would have b claim them).
    const until = Date.now() + 4 * IDLE_RELEASE_MS;
    let served = 0;
    while (Date.now() < until) {
      const res = await b.api.get('/users/@me', { token: user.token });
      assert.equal(res.status, 200, res.text);
      served += 1;
    }
    assert.ok(served > 10, `only ${served} requests`);
    assert.equal(await ownedUsers(b.api), 0, 'b never had to claim the user');
    assert.equal(await ownedUsers(a.api), 1, 'a still owns the user');
    // Nobody uses them now: a gives them up once the idle bound has passed (at a renewal tick).
    await within(10 * IDLE_RELEASE_MS, 'a gives the idle user up', async () => ((await ownedUsers(a.api)) === 0 ? true : undefined));
    assert.equal(await ownedUsers(b.api), 0);
  });
});
