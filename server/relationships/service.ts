import type { Logger } from 'pino';
import type { PutRelationshipBody, Relationship } from '../../shared/schemas/relationships.ts';
import { AppError } from '../core/app-error.ts';
import { STORAGE_FAILURE, guardStorage } from '../core/storage-failure.ts';
import type { RelationshipPair } from '../storage/directory-store.ts';
import type { Storage } from '../storage/index.ts';
import type { UsersService } from '../users/service.ts';

/**
 * How often a change is tried again when another change of the same pair came between its read and
 * its write. Each retry reads what the other change wrote, so only a pair changed this many times
 * within one request's round trips runs out (and is told to retry: 503).
 */
const MAX_ATTEMPTS = 8;

/**
 * Friends, friend requests and blocks. Each side keeps its own row, so a user only ever sees their
 * own view: the blocked side has no row at all and cannot tell a block from "no relationship".
 * A change reads both rows of the pair, decides the next pair here, and writes it only if neither
 * row moved meanwhile (`replaceRelationshipPair`): the rules live in one place for every store.
 */
export class RelationshipsService {
  private readonly directory: Storage['directory'];
  private readonly nextId: Storage['nextId'];

  constructor(
    storage: Storage,
    private readonly users: UsersService,
    private readonly logger: Logger,
  ) {
    this.directory = storage.directory;
    this.nextId = storage.nextId;
  }

  async list(userId: string): Promise<Relationship[]> {
    const rows = await this.reading(() => this.directory.listRelationships(userId));
    return Promise.all(rows.map(async (row) => ({ id: row.other_id, type: row.type, user: await this.users.publicUser(row.other_id) })));
  }

  /** Sends or accepts a friend request, or blocks; answers the caller's resulting relationship. */
  async put(userId: string, otherId: string, body: PutRelationshipBody): Promise<Relationship> {
    if (otherId === userId) throw new AppError('cannot_relate_to_self', 'You cannot befriend or block yourself');
    const user = await this.users.publicUser(otherId);
    const pair = await this.change(userId, otherId, (current) => (body.type === 'friend' ? befriend(current) : block(current)));
    return { id: otherId, type: pair.mine ?? 'block', user };
  }

  /** Removes a friend, cancels or declines a request, or unblocks. Nothing to remove is fine too. */
  async remove(userId: string, otherId: string): Promise<void> {
    if (otherId === userId) throw new AppError('cannot_relate_to_self', 'You cannot befriend or block yourself');
    await this.users.publicUser(otherId);
    await this.change(userId, otherId, remove);
  }

  async isBlockedEitherWay(a: string, b: string): Promise<boolean> {
    const pair = await this.reading(() => this.directory.readRelationshipPair(a, b));
    return pair.mine === 'block' || pair.theirs === 'block';
  }

  async areFriends(a: string, b: string): Promise<boolean> {
    return (await this.reading(() => this.directory.readRelationshipPair(a, b))).mine === 'friend';
  }

  private reading<T>(read: () => Promise<T>): Promise<T> {
    return guardStorage(this.logger, STORAGE_FAILURE.read, read);
  }

  /** Reads the pair, applies `decide`, and writes the result unless the pair moved meanwhile (then again). */
  private async change(userId: string, otherId: string, decide: (current: RelationshipPair) => RelationshipPair): Promise<RelationshipPair> {
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt += 1) {
      const written = await guardStorage(this.logger, STORAGE_FAILURE.write, async () => {
        const current = await this.directory.readRelationshipPair(userId, otherId);
        const next = decide(current);
        if (next.mine === current.mine && next.theirs === current.theirs) return next;
        return (await this.directory.replaceRelationshipPair(userId, otherId, current, next, this.nextId())) ? next : null;
      });
      if (written !== null) return written;
    }
    throw new AppError('service_unavailable', 'This relationship is being changed by other requests right now; retry', {
      headers: { 'Retry-After': '1' },
    });
  }
}

/** A friend request: accepts theirs, or asks; refused (403) where they block the caller. */
function befriend({ mine, theirs }: RelationshipPair): RelationshipPair {
  if (theirs === 'block') throw new AppError('cannot_add_friend', 'You cannot send this user a friend request');
  if (mine === 'friend' || mine === 'outgoing_request') return { mine, theirs };
  if (mine === 'incoming_request') return { mine: 'friend', theirs: 'friend' };
  // No relationship, or the caller had blocked them: asking for friendship lifts the caller's block.
  return { mine: 'outgoing_request', theirs: 'incoming_request' };
}

/** A block: a friendship or request ends on their side too; their own block of the caller stays. */
function block({ theirs }: RelationshipPair): RelationshipPair {
  return { mine: 'block', theirs: theirs === 'block' ? 'block' : undefined };
}

/** Unblocking touches only the blocker's row; ending a friendship or request ends both sides. */
function remove({ mine, theirs }: RelationshipPair): RelationshipPair {
  if (mine === undefined) return { mine, theirs };
  if (mine === 'block' || theirs === 'block') return { mine: undefined, theirs };
  return { mine: undefined, theirs: undefined };
}
