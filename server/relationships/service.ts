import type { PutRelationshipBody, Relationship, RelationshipType } from '../../shared/schemas/relationships.ts';
import { AppError } from '../core/app-error.ts';
import type { Storage } from '../storage/index.ts';
import type { UsersService } from '../users/service.ts';
import * as repo from './repo.ts';

/**
 * Friends, friend requests and blocks. Each side keeps its own row, so a user only ever sees their
 * own view: the blocked side has no row at all and cannot tell a block from "no relationship".
 */
export class RelationshipsService {
  private readonly directory: Storage['directory'];
  private readonly nextId: Storage['nextId'];

  constructor(
    storage: Storage,
    private readonly users: UsersService,
  ) {
    this.directory = storage.directory;
    this.nextId = storage.nextId;
  }

  list(userId: string): Relationship[] {
    return repo.listRelationships(this.directory, userId).map((row) => ({
      id: row.other_id,
      type: row.type,
      user: this.users.publicUser(row.other_id),
    }));
  }

  /** Sends or accepts a friend request, or blocks; answers the caller's resulting relationship. */
  put(userId: string, otherId: string, body: PutRelationshipBody): Relationship {
    if (otherId === userId) throw new AppError('cannot_relate_to_self', 'You cannot befriend or block yourself');
    const user = this.users.publicUser(otherId);
    const type = this.directory.transaction(() => {
      const changed = this.nextId();
      return body.type === 'friend' ? this.befriend(userId, otherId, changed) : this.block(userId, otherId, changed);
    });
    return { id: otherId, type, user };
  }

  /** Removes a friend, cancels or declines a request, or unblocks. Nothing to remove is fine too. */
  remove(userId: string, otherId: string): void {
    if (otherId === userId) throw new AppError('cannot_relate_to_self', 'You cannot befriend or block yourself');
    this.users.publicUser(otherId);
    this.directory.transaction(() => {
      const mine = repo.findRelationship(this.directory, userId, otherId);
      if (mine === undefined) return;
      repo.deleteRelationship(this.directory, userId, otherId);
      // Unblocking touches only the blocker's row; ending a friendship or request ends both sides.
      if (mine !== 'block' && repo.findRelationship(this.directory, otherId, userId) !== 'block') {
        repo.deleteRelationship(this.directory, otherId, userId);
      }
    });
  }

  isBlockedEitherWay(a: string, b: string): boolean {
    return repo.isBlockedEitherWay(this.directory, a, b);
  }

  areFriends(a: string, b: string): boolean {
    return repo.findRelationship(this.directory, a, b) === 'friend';
  }

  private befriend(userId: string, otherId: string, changed: string): RelationshipType {
    const theirs = repo.findRelationship(this.directory, otherId, userId);
    if (theirs === 'block') {
      throw new AppError('cannot_add_friend', 'You cannot send this user a friend request');
    }
    const mine = repo.findRelationship(this.directory, userId, otherId);
    if (mine === 'friend' || mine === 'outgoing_request') return mine;
    if (mine === 'incoming_request') {
      repo.setRelationship(this.directory, userId, otherId, 'friend', changed);
      repo.setRelationship(this.directory, otherId, userId, 'friend', changed);
      return 'friend';
    }
    // No relationship, or the caller had blocked them: asking for friendship lifts the caller's block.
    repo.setRelationship(this.directory, userId, otherId, 'outgoing_request', changed);
    repo.setRelationship(this.directory, otherId, userId, 'incoming_request', changed);
    return 'outgoing_request';
  }

  private block(userId: string, otherId: string, changed: string): RelationshipType {
    repo.setRelationship(this.directory, userId, otherId, 'block', changed);
    // A friendship or request ends on their side too; their own block of the caller stays.
    if (repo.findRelationship(this.directory, otherId, userId) !== 'block') repo.deleteRelationship(this.directory, otherId, userId);
    return 'block';
  }
}
