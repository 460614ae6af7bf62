import * as encoding from 'lib0/encoding';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { KEY_PREFIX } from './leases.ts';
import { MalformedNodeMessage, decodeNodeMessages, writeNodeMessage, type NodeMessage } from './wire.ts';

const channelOf = (nodeId: string) => `${KEY_PREFIX}to:${nodeId}`;
export const BROADCAST = `${KEY_PREFIX}all`;

/** Why messages for a node were lost: it is not listening (gone), or Redis could not take them. */
export type LinkLoss = 'gone' | 'unreachable';

export interface BusHandlers {
  onMessage(message: NodeMessage): void;
  /** The subscription dropped: whatever was sent to this node meanwhile is lost. */
  onInterrupted(): void;
  /** Messages this node sent to `node` were lost (the batch that held them). */
  onLinkLost(node: string, loss: LinkLoss): void;
}

/**
 * The nodes' messages over Redis pub/sub: one channel per node, one for all. What a node sends a
 * channel during one event-loop turn is written into that channel's batch and leaves at the end of
 * the turn as one PUBLISH, so the cost of relaying follows the turns, not the frames. Messages from
 * one node to another arrive in the order they were sent (one connection each way), at most once:
 * a lost batch is reported once (`onLinkLost`), for the sender to end what depended on it.
 */
export class NodeBus {
  /** Messages are written straight into their channel's batch (no copy per message). */
  private readonly outbox = new Map<string, { node: string | undefined; encoder: encoding.Encoder }>();
  private flushScheduled: NodeJS.Immediate | undefined;

  private constructor(
    private readonly nodeId: string,
    private readonly redis: Redis,
    private readonly subscriber: Redis,
    private readonly logger: Logger,
    private readonly handlers: BusHandlers,
  ) {}

  /** Subscribes on `subscriber` (a connection of its own: a subscribed connection runs no other command). */
  static async open(nodeId: string, redis: Redis, subscriber: Redis, logger: Logger, handlers: BusHandlers): Promise<NodeBus> {
    subscriber.on('messageBuffer', (_channel: Buffer, raw: Buffer) => {
      let messages: NodeMessage[];
      try {
        messages = decodeNodeMessages(raw);
      } catch (error) {
        if (!(error instanceof MalformedNodeMessage)) throw error;
        logger.warn({ err: error }, 'ignored a message on the cluster channel that is not one of ours');
        return;
      }
      for (const message of messages) {
        try {
          handlers.onMessage(message);
        } catch (error) {
          logger.error({ err: error, kind: message.kind }, 'handling a message from another node failed');
        }
      }
    });
    let subscribed = true;
    subscriber.on('close', () => {
      if (!subscribed) return;
      subscribed = false;
      handlers.onInterrupted();
    });
    subscriber.on('ready', () => {
      subscribed = true;
    });
    await subscriber.subscribe(channelOf(nodeId), BROADCAST);
    return new NodeBus(nodeId, redis, subscriber, logger, handlers);
  }

  /** Sends to one node, at the end of this event-loop turn. */
  send(node: string, message: NodeMessage): void {
    writeNodeMessage(this.batchFor(channelOf(node), node), message);
  }

  /** Sends to every node (this one too), at the end of this event-loop turn. */
  broadcast(message: NodeMessage): void {
    writeNodeMessage(this.batchFor(BROADCAST, undefined), message);
  }

  get self(): string {
    return this.nodeId;
  }

  close(): void {
    this.flush();
    this.subscriber.disconnect();
  }

  private batchFor(channel: string, node: string | undefined): encoding.Encoder {
    let batch = this.outbox.get(channel);
    if (batch === undefined) {
      batch = { node, encoder: encoding.createEncoder() };
      this.outbox.set(channel, batch);
      this.flushScheduled ??= setImmediate(() => this.flush());
    }
    return batch.encoder;
  }

  private flush(): void {
    if (this.flushScheduled !== undefined) clearImmediate(this.flushScheduled);
    this.flushScheduled = undefined;
    for (const [channel, { node, encoder }] of this.outbox) {
      const bytes = encoding.toUint8Array(encoder);
      this.redis.publish(channel, Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)).then(
        (receivers) => {
          if (receivers === 0 && node !== undefined) this.handlers.onLinkLost(node, 'gone');
        },
        (error: unknown) => {
          this.logger.debug({ err: error, channel }, 'could not send to the cluster channel');
          if (node !== undefined) this.handlers.onLinkLost(node, 'unreachable');
        },
      );
    }
    this.outbox.clear();
  }
}
