import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { KEY_PREFIX } from './leases.ts';
import { MalformedNodeMessage, decodeNodeMessage, encodeNodeMessage, type NodeMessage } from './wire.ts';

const channelOf = (nodeId: string) => `${KEY_PREFIX}to:${nodeId}`;
const BROADCAST = `${KEY_PREFIX}all`;

/**
 * The nodes' messages over Redis pub/sub: one channel per node, one for all. Messages from one
 * node to another arrive in the order they were sent (one connection each way), at most once.
 */
export class NodeBus {
  private constructor(
    private readonly nodeId: string,
    private readonly redis: Redis,
    private readonly subscriber: Redis,
    private readonly logger: Logger,
  ) {}

  /**
   * Subscribes on `subscriber` (a connection of its own: a subscribed connection runs no other
   * command). `onMessage` gets every message for this node or for all; `onInterrupted` runs once
   * each time the subscription drops, since whatever was sent meanwhile is lost.
   */
  static async open(
    nodeId: string,
    redis: Redis,
    subscriber: Redis,
    logger: Logger,
    handlers: { onMessage(message: NodeMessage): void; onInterrupted(): void },
  ): Promise<NodeBus> {
    subscriber.on('messageBuffer', (_channel: Buffer, raw: Buffer) => {
      let message: NodeMessage;
      try {
        message = decodeNodeMessage(raw);
      } catch (error) {
        if (!(error instanceof MalformedNodeMessage)) throw error;
        logger.warn({ err: error }, 'ignored a message on the cluster channel that is not one of ours');
        return;
      }
      try {
        handlers.onMessage(message);
      } catch (error) {
        logger.error({ err: error, kind: message.kind }, 'handling a message from another node failed');
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
    return new NodeBus(nodeId, redis, subscriber, logger);
  }

  /** Sends to one node; resolves with how many received it (0: that node is not listening). */
  send(node: string, message: NodeMessage): Promise<number> {
    return this.redis.publish(channelOf(node), toBuffer(encodeNodeMessage(message)));
  }

  /** Sends an encoded message to one node; `onFail` runs when it could not be sent (it is lost). */
  sendEncoded(node: string, message: Buffer, onFail?: () => void): void {
    this.redis.publish(channelOf(node), message).catch((error: unknown) => {
      this.logger.debug({ err: error, node }, 'could not send to a node');
      onFail?.();
    });
  }

  /** Sends to every node (this one too). */
  broadcast(message: NodeMessage): Promise<number> {
    return this.redis.publish(BROADCAST, toBuffer(encodeNodeMessage(message)));
  }

  get self(): string {
    return this.nodeId;
  }

  close(): void {
    this.subscriber.disconnect();
  }
}

export function encodeForBus(message: NodeMessage): Buffer {
  return toBuffer(encodeNodeMessage(message));
}

function toBuffer(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}
