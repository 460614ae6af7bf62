import type { DmChannel, DmChannelListEntry } from '../../shared/schemas/channels.ts';
import { nowSeconds } from '../../shared/time.ts';
import { AppError } from '../core/app-error.ts';
import type { RelationshipsService } from '../relationships/service.ts';
import type { MessagingSettingsService } from '../settings/messaging-service.ts';
import type { Storage } from '../storage/index.ts';
import type { UsersService } from '../users/service.ts';
import * as repo from './repo.ts';

export interface ChannelsDeps {
  storage: Storage;
  users: UsersService;
  relationships: RelationshipsService;
  messaging: MessagingSettingsService;
}

/** DM channels: one per pair of users, opened only where neither a block nor the recipient's privacy refuses. */
export class ChannelsService {
  constructor(private readonly deps: ChannelsDeps) {}

  /** Create-or-get the caller's DM channel with `recipientId` (already a well-formed snowflake). */
  open(userId: string, recipientId: string): DmChannel {
    if (recipientId === userId) {
      throw new AppError('cannot_dm_self', 'You cannot open a DM with yourself; your notes channel is GET /users/@me/notes');
    }
    const recipient = this.deps.users.publicUser(recipientId);
    this.assertMayMessage(userId, recipientId);
    const { directory, nextId } = this.deps.storage;
    const id = repo.openDmChannel(directory, userId, recipientId, nextId, nowSeconds());
    return { id, type: 'dm', recipient_id: recipientId, recipient };
  }

  list(userId: string): DmChannelListEntry[] {
    return repo.listDmChannels(this.deps.storage.directory, userId).map((row) => ({
      id: row.id,
      type: 'dm',
      recipient_id: row.recipient_id,
      recipient: this.deps.users.publicUser(row.recipient_id),
      last_message_id: row.last_message_id,
    }));
  }

  /**
   * One answer for every refusal (a block either way, "friends" without friendship, "none"), so
   * the sender cannot tell a block from a privacy setting.
   */
  private assertMayMessage(senderId: string, recipientId: string): void {
    const { relationships, messaging } = this.deps;
    const allow = messaging.get(recipientId).allow_dms_from;
    const allowed =
      !relationships.isBlockedEitherWay(senderId, recipientId) &&
      (allow === 'everyone' || (allow === 'friends' && relationships.areFriends(recipientId, senderId)));
    if (!allowed) throw new AppError('cannot_message', 'You cannot message this user');
  }
}
