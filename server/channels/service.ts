import type { DmChannel, DmChannelListEntry } from '../../shared/schemas/channels.ts';
import type { AllowDmsFrom } from '../../shared/schemas/messaging-settings.ts';
import { nowSeconds } from '../../shared/time.ts';
import type { Logger } from 'pino';
import { AppError } from '../core/app-error.ts';
import { STORAGE_FAILURE, guardStorage } from '../core/storage-failure.ts';
import type { RelationshipsService } from '../relationships/service.ts';
import type { Storage } from '../storage/index.ts';
import type { UsersService } from '../users/service.ts';

export interface ChannelsDeps {
  storage: Storage;
  users: UsersService;
  relationships: RelationshipsService;
  logger: Logger;
}

/** DM channels: one per pair of users, opened only where neither a block nor the recipient's privacy refuses. */
export class ChannelsService {
  constructor(private readonly deps: ChannelsDeps) {}

  /** Create-or-get the caller's DM channel with `recipientId` (already a well-formed snowflake). */
  async open(userId: string, recipientId: string): Promise<DmChannel> {
    if (recipientId === userId) {
      throw new AppError('cannot_dm_self', 'You cannot open a DM with yourself; your notes channel is GET /users/@me/notes');
    }
    // The recipient's card (the directory's index), never their file: it says who they are and
    // who may message them, in one read.
    const card = await this.deps.users.cardOf(recipientId);
    const recipient = this.deps.users.publicUserOf(card);
    await this.assertMayMessage(userId, recipientId, card.allowDmsFrom);
    const { directory, nextId } = this.deps.storage;
    const id = await this.guarded(STORAGE_FAILURE.write, () => directory.openDmChannel(userId, recipientId, nextId(), nowSeconds()));
    return { id, type: 'dm', recipient_id: recipientId, recipient };
  }

  async list(userId: string): Promise<DmChannelListEntry[]> {
    const rows = await this.guarded(STORAGE_FAILURE.read, () => this.deps.storage.directory.listDmChannels(userId));
    return Promise.all(
      rows.map(async (row) => ({
        id: row.id,
        type: 'dm' as const,
        recipient_id: row.recipient_id,
        recipient: await this.deps.users.publicUser(row.recipient_id),
        last_message_id: row.last_message_id,
      })),
    );
  }

  /**
   * One answer for every refusal (a block either way, "friends" without friendship, "none"), so
   * the sender cannot tell a block from a privacy setting.
   */
  private async assertMayMessage(senderId: string, recipientId: string, allow: AllowDmsFrom): Promise<void> {
    const { relationships } = this.deps;
    const allowed =
      !(await relationships.isBlockedEitherWay(senderId, recipientId)) &&
      (allow === 'everyone' || (allow === 'friends' && (await relationships.areFriends(recipientId, senderId))));
    if (!allowed) throw new AppError('cannot_message', 'You cannot message this user');
  }

  private guarded<T>(message: string, work: () => Promise<T>): Promise<T> {
    return guardStorage(this.deps.logger, message, work);
  }
}
