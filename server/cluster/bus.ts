import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { KEY_PREFIX } from './leases.ts';
import { MalformedNodeMessage, decodeBatch, decodeNodeMessage, encodeBatch, encodeNodeMessage, type NodeMessage } from './wire.ts';

const channelOf = (nodeId: string) => `${KEY_PREFIX}to:${nodeId}`;
const BROADCAST = `${KEY_PREFIX}all`;

/** What one channel gets at the end of this event-loop turn, and who waits for it to be sent. */
interface Outgoing {
  messages: Uint8Array[];
  sent: Promise<number>;
  settle: (result: { receivers: number } | { error: unknown }) => void;
}

/**
 * The nodes' messages over Redis pub/sub: one channel per node, one for all. What a node sends a
 * channel during one event-loop turn leaves at the end of it as one PUBLISH (`encodeBatch`), so the
 * cost of relaying follows the turns, not the frames. Messages from one node to another arrive in
 * the order they were sent (one connection each way), at most once.
 */
export class NodeBus {
  private readonly outbox = new Map<string, Outgoing>();
  private flushScheduled: NodeJS.Immediate | undefined;

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
      let messages: NodeMessage[];
      try {
        messages = decodeBatch(raw).map(decodeNodeMessage);
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
    return new NodeBus(nodeId, redis, subscriber, logger);
  }

  /** Sends to one node; resolves with how many received it (0: that node is not listening). */
  send(node: string, message: NodeMessage): Promise<number> {
    return this.enqueue(channelOf(node), encodeNodeMessage(message));
  }

  /** Sends an encoded message (`encodeNodeMessage`) to one node; `onFail` runs when it could not be sent (it is lost). */
  sendEncoded(node: string, message: Uint8Array, onFail?: () => void): void {
    this.enqueue(channelOf(node), message).catch((error: unknown) => {
      this.logger.debug({ err: error, node }, 'could not send to a node');
      onFail?.();
    });
  }

  /** Sends to every node (this one too). */
  broadcast(message: NodeMessage): Promise<number> {
    return this.enqueue(BROADCAST, encodeNodeMessage(message));
  }

  get self(): string {
    return this.nodeId;
  }

  close(): void {
    this.flush();
    this.subscriber.disconnect();
  }

  private enqueue(channel: string, message: Uint8Array): Promise<number> {
    let outgoing = this.outbox.get(channel);
    if (outgoing === undefined) {
      let settle: Outgoing['settle'] = () => {};
      const sent = new Promise<number>((resolve, reject) => {
        settle = (result) => ('error' in result ? reject(result.error) : resolve(result.receivers));
      });
      // Whoever does not wait for it must not turn a failure into an unhandled rejection.
      sent.catch(() => {});
      outgoing = { messages: [], sent, settle };
      this.outbox.set(channel, outgoing);
      this.flushScheduled ??= setImmediate(() => this.flush());
    }
    outgoing.messages.push(message);
    return outgoing.sent;
  }

  private flush(): void {
    if (this.flushScheduled !== undefined) clearImmediate(this.flushScheduled);
    this.flushScheduled = undefined;
    for (const [channel, outgoing] of this.outbox) {
      this.redis.publish(channel, toBuffer(encodeBatch(outgoing.messages))).then(
        (receivers) => outgoing.settle({ receivers }),
        (error: unknown) => outgoing.settle({ error }),
      );
    }
    this.outbox.clear();
  }
}

function toBuffer(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}
