import { randomBytes } from 'node:crypto';
import * as encoding from 'lib0/encoding';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { FileHeldElsewhereError, NotOwnerError } from '../storage/errors.ts';
import type { FileAccess, UserFiles } from '../storage/user-files.ts';
import { BROADCAST } from './bus.ts';
import { Leases, commandHolderName, isCommandHolder } from './leases.ts';
import { connectRedis } from './redis.ts';
import { MalformedNodeMessage, decodeNodeMessages, writeNodeMessage, type NodeMessage } from './wire.ts';

/**
 * How long a command waits for a user, in leases: a live owner hands them over in milliseconds,
 * a dead one's lease ends within one.
 */
const WAIT_LEASES = 3;
/** The first and the longest pause between two looks while a user is not this command's yet. */
const FIRST_RETRY_MS = 20;
const MAX_RETRY_MS = 250;

/** A command could not take a user within its bound: one line naming the account and why. */
class UserNotHandedOverError extends Error {
  override readonly name = 'UserNotHandedOverError';
}

export interface CommandHoldsOptions {
  /** How long the command's hold on a user lasts unrenewed (renewed every third of it while held). */
  leaseMs: number;
  logger: Logger;
  /** The account's name, for the line that says a user could not be taken (undefined: unknown). */
  describe(userId: string): Promise<string | undefined>;
}

/**
 * An admin command's hold on the users it works on, in cluster mode (docs/cluster.md, "The shared
 * volume"): the nodes hold their users' files exclusively, so a command takes each user the way a
 * node does — a lease in Redis under a holder name no node id can have (`command:<pid>-<random>`),
 * drawn from the same fencing counter and written into the file — for the moment of its work, and
 * gives them back after (file closed first). A user a node owns is asked for on the nodes'
 * channel (`release-user`): the owner stores what its devices sent, closes their sockets (1012)
 * and hands the lease straight to the command (`user-released`). Meanwhile the nodes answer the
 * user's requests 503 ("moving") and close new sockets with 1013. A user that cannot be had within
 * `WAIT_LEASES` leases ends the command with one line naming the account.
 *
 * It is the command's `FileAccess`: its UserFiles open only the files of users held here, in
 * exclusive locking mode too.
 */
export class CommandHolds implements FileAccess {
  private readonly leases: Leases;
  /** Each held user and how many holds of the command are on them (taken at the first, given back after the last). */
  private readonly refs = new Map<string, number>();
  private readonly taking = new Map<string, Promise<void>>();
  /** Takes waiting for their user's hand-over: woken by the owner's `user-released`. */
  private readonly waiting = new Map<string, () => void>();
  private readonly timer: NodeJS.Timeout;
  private renewing = false;
  /** A command stopped by a signal gives its users back first (their nodes need not wait out a lease). */
  private readonly onSignal = (signal: NodeJS.Signals) => {
    void this.close().finally(() => process.exit(signal === 'SIGINT' ? 130 : 143));
  };
  /** Users a node was serving and handed over to this command: their sockets reconnected. */
  handedOver = 0;

  private constructor(
    readonly holder: string,
    private readonly redis: Redis,
    private readonly subscriber: Redis,
    private readonly userFiles: UserFiles,
    private readonly options: CommandHoldsOptions,
  ) {
    this.leases = new Leases(redis, holder, options.leaseMs, options.logger);
    subscriber.on('messageBuffer', (_channel: Buffer, raw: Buffer) => this.heard(raw));
    // A long piece of work (a backup of a large file) keeps its holds: renewed as a node renews.
    this.timer = setInterval(() => void this.renew(), Math.max(100, Math.floor(options.leaseMs / 3)));
    this.timer.unref();
    process.once('SIGINT', this.onSignal);
    process.once('SIGTERM', this.onSignal);
  }

  /** Listens on the nodes' channel (a connection of its own) and makes `userFiles` open only what this command holds. */
  static async start(redisUrl: string, redis: Redis, userFiles: UserFiles, options: CommandHoldsOptions): Promise<CommandHolds> {
    const holder = commandHolderName(`${process.pid}-${randomBytes(4).toString('hex')}`);
    const subscriber = await connectRedis(redisUrl, options.logger, `plexichat:${holder}:sub`);
    try {
      await subscriber.subscribe(BROADCAST);
      const holds = new CommandHolds(holder, redis, subscriber, userFiles, options);
      userFiles.ownOnly(holds);
      return holds;
    } catch (error) {
      subscriber.disconnect();
      throw error;
    }
  }

  mayUse(userId: string): boolean {
    return this.leases.owns(userId);
  }

  /** A new account's id (an account made or imported by the command): held until `letGo`. */
  async claimNew(userId: string): Promise<number> {
    const claim = await this.leases.acquire(userId);
    if ('owner' in claim) throw new NotOwnerError(`the new user ${userId} is held by ${claim.owner}`);
    this.refs.set(userId, (this.refs.get(userId) ?? 0) + 1);
    return claim.token;
  }

  async hold(userId: string): Promise<() => Promise<void>> {
    let pending = this.taking.get(userId);
    if (pending === undefined && !this.refs.has(userId)) {
      pending = this.take(userId).finally(() => this.taking.delete(userId));
      this.taking.set(userId, pending);
    }
    await pending;
    this.refs.set(userId, (this.refs.get(userId) ?? 0) + 1);
    let released = false;
    return async () => {
      if (released) return;
      released = true;
      await this.letGo(userId);
    };
  }

  /** Ends one hold on the user; after the last, the file is closed and the lease given back. */
  async letGo(userId: string): Promise<void> {
    const refs = (this.refs.get(userId) ?? 0) - 1;
    if (refs > 0) {
      this.refs.set(userId, refs);
      return;
    }
    this.refs.delete(userId);
    await this.giveBack(userId);
  }

  /** Gives back every user still held (a command that ends, or fails), and stops listening. */
  async close(): Promise<void> {
    clearInterval(this.timer);
    process.removeListener('SIGINT', this.onSignal);
    process.removeListener('SIGTERM', this.onSignal);
    const users = new Set([...this.refs.keys(), ...this.leases.users()]);
    this.refs.clear();
    await Promise.allSettled([...users].map((userId) => this.giveBack(userId)));
    this.subscriber.disconnect();
  }

  /**
   * Takes the user: free, at once; held by a node, asked for and handed over; held by another
   * command, when it is done. The token is written into the file, which stays open here.
   */
  private async take(userId: string): Promise<void> {
    const deadline = Date.now() + WAIT_LEASES * this.options.leaseMs;
    let pause = FIRST_RETRY_MS;
    let holder: string | undefined;
    let asked = false;
    let fileHeld = false;
    for (;;) {
      const claim = await this.leases.acquire(userId);
      if ('owner' in claim) {
        holder = claim.owner;
        fileHeld = false;
        const released = new Promise<void>((resolve) => this.waiting.set(userId, resolve));
        try {
          // Asked again at each look: a broadcast can be lost, and an owner may only now be back.
          if (!isCommandHolder(holder)) {
            await this.publish({ kind: 'release-user', from: this.holder, userId, leaseMs: this.options.leaseMs });
            asked = true;
          }
          await this.wait(Math.min(pause, deadline - Date.now()), released);
        } finally {
          this.waiting.delete(userId);
        }
      } else {
        try {
          this.userFiles.claim(userId, claim.token);
          if (asked) this.handedOver += 1;
          return;
        } catch (error) {
          if (error instanceof FileHeldElsewhereError) {
            // The lease is ours but the former holder still has the file open (paused, or
            // about to close it): kept, and tried again.
            fileHeld = true;
            await this.wait(Math.min(pause, deadline - Date.now()));
          } else if (error instanceof NotOwnerError && error.storedToken !== undefined) {
            // The file holds a newer token than Redis drew (Redis lost its data): draw above it.
            await this.leases.release(userId);
            await this.leases.raiseFence(userId, error.storedToken);
          } else {
            // No file (missing, or a deletion that stopped half-way), or one that cannot be
            // opened (damaged): held all the same, and whatever uses it finds out as on one node.
            return;
          }
        }
      }
      if (Date.now() >= deadline) {
        // A hand-over that comes after this is given back too.
        await this.leases.abandon(userId).catch(() => undefined);
        throw new UserNotHandedOverError(await this.failure(userId, holder, fileHeld));
      }
      pause = Math.min(pause * 2, MAX_RETRY_MS);
    }
  }

  private async giveBack(userId: string): Promise<void> {
    this.userFiles.disown(userId);
    try {
      await this.leases.release(userId);
    } catch (error) {
      this.options.logger.warn({ err: error, userId }, 'could not give a user back; the hold ends by itself within a lease');
    }
  }

  private async renew(): Promise<void> {
    if (this.renewing) return;
    this.renewing = true;
    try {
      for (const userId of await this.leases.renew()) {
        this.options.logger.warn({ userId }, 'lost the hold on a user (Redis unreachable, or the command was paused): nothing more of theirs is written');
      }
    } finally {
      this.renewing = false;
    }
  }

  private async publish(message: NodeMessage): Promise<void> {
    const encoder = encoding.createEncoder();
    writeNodeMessage(encoder, message);
    await this.redis.publish(BROADCAST, Buffer.from(encoding.toUint8Array(encoder)));
  }

  /** A message on the nodes' channel: a hand-over this command waits for. */
  private heard(raw: Buffer): void {
    let messages: NodeMessage[];
    try {
      messages = decodeNodeMessages(raw);
    } catch (error) {
      if (error instanceof MalformedNodeMessage) return;
      throw error;
    }
    for (const message of messages) {
      if (message.kind === 'user-released' && message.to === this.holder) this.waiting.get(message.userId)?.();
    }
  }

  /** Resolves after `ms`, or as `early` does. */
  private async wait(ms: number, early?: Promise<void>): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([new Promise<void>((resolve) => (timer = setTimeout(resolve, Math.max(0, ms)))), ...(early === undefined ? [] : [early])]);
    clearTimeout(timer);
  }

  private async failure(userId: string, holder: string | undefined, fileHeld: boolean): Promise<string> {
    const name = await this.options.describe(userId).catch(() => undefined);
    const account = name === undefined ? `the account with id ${userId}` : `the account ${name} (id ${userId})`;
    const within = `within ${Math.round((WAIT_LEASES * this.options.leaseMs) / 1000)} s`;
    if (fileHeld) {
      return `could not take ${account} ${within}: its file is still open in another process (a node that stopped answering, paused or cut off?); retry once that node is back or gone`;
    }
    if (holder !== undefined && isCommandHolder(holder))
      return `could not take ${account} ${within}: another admin command holds it (${holder}); retry when it is done`;
    return `could not take ${account} ${within}: the node ${holder ?? '(unknown)'} serving it did not hand it over; retry, and if that fails again, look at that node`;
  }
}
