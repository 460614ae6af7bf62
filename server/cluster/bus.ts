import * as encoding from 'lib0/encoding';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { KEY_PREFIX } from './leases.ts';
import { FRAME_HEADER_BYTES, type LinkLoss, type Links } from './links.ts';
import { MalformedNodeMessage, decodeNodeMessages, writeNodeMessage, type NodeMessage } from './wire.ts';

export const BROADCAST = `${KEY_PREFIX}all`;
/**
 * A node's batch for another grows into a new frame past this size, so that a turn that relays a
 * lot is several frames, each within what the receiver accepts (one message plus this at most).
 */
const SOFT_FRAME_BYTES = 1024 * 1024;

export type { LinkLoss } from './links.ts';

export interface BusHandlers {
  onMessage(message: NodeMessage): void;
  /** The link from `node` dropped: what it sent this node meanwhile may be lost. */
  onInterrupted(node: string): void;
  /** Messages this node sent to `node` were lost (reported once per failed link). */
  onLinkLost(node: string, loss: LinkLoss): void;
  /** The subscription to the broadcast channel dropped: Redis is unreachable, and broadcasts were lost. */
  onBroadcastInterrupted(): void;
}

/**
 * The nodes' messages: to one node over a direct link (links.ts), to all over Redis pub/sub. What
 * a node sends another during one event-loop turn is written straight into that node's batch (no
 * copy per message) and leaves at the end of the turn as one socket write, so the cost of relaying
 * follows the turns, not the frames. Messages from one node to another arrive in the order they
 * were sent (one link each way), at most once: a lost link is reported once (`onLinkLost` on the
 * sender, `onInterrupted` on the receiver), for each side to end what depended on it.
 */
export class NodeBus {
  /** Each node's frames of this turn, a length header ahead of each (filled in when it leaves). */
  private outbox = new Map<string, encoding.Encoder[]>();
  private broadcastBatch: encoding.Encoder | undefined;
  private flushScheduled: NodeJS.Immediate | undefined;

  private constructor(
    private readonly nodeId: string,
    private readonly links: Links,
    private readonly redis: Redis,
    private readonly subscriber: Redis,
    private readonly logger: Logger,
  ) {}

  /** Serves the links and subscribes on `subscriber` (a connection of its own: a subscribed connection runs no other command). */
  static async open(nodeId: string, links: Links, redis: Redis, subscriber: Redis, logger: Logger, handlers: BusHandlers): Promise<NodeBus> {
    const deliver = (messages: NodeMessage[]) => {
      for (const message of messages) {
        try {
          handlers.onMessage(message);
        } catch (error) {
          logger.error({ err: error, kind: message.kind }, 'handling a message from another node failed');
        }
      }
    };
    links.serve({
      // A frame that cannot be read throws: the link drops, and what came over it ends (`onInterrupted`).
      onFrame: (_node, frame) => deliver(decodeNodeMessages(frame)),
      onInterrupted: (node) => handlers.onInterrupted(node),
      onLost: (node, loss) => handlers.onLinkLost(node, loss),
    });
    subscriber.on('messageBuffer', (_channel: Buffer, raw: Buffer) => {
      let messages: NodeMessage[];
      try {
        messages = decodeNodeMessages(raw);
      } catch (error) {
        if (!(error instanceof MalformedNodeMessage)) throw error;
        logger.warn({ err: error }, 'ignored a message on the cluster channel that is not one of ours');
        return;
      }
      deliver(messages);
    });
    let subscribed = true;
    subscriber.on('close', () => {
      if (!subscribed) return;
      subscribed = false;
      handlers.onBroadcastInterrupted();
    });
    subscriber.on('ready', () => {
      subscribed = true;
      // Back after a drop: subscribed again here (connectRedis leaves it to us). Refused, the
      // connection dropped again (the next 'ready' tries again) or is closing.
      subscriber.subscribe(BROADCAST).catch((error: unknown) => {
        logger.warn({ err: error }, 'could not subscribe to the cluster channel again; trying again when Redis is back');
      });
    });
    await subscriber.subscribe(BROADCAST);
    return new NodeBus(nodeId, links, redis, subscriber, logger);
  }

  /** Sends to one node, at the end of this event-loop turn. */
  send(node: string, message: NodeMessage): void {
    writeNodeMessage(this.batchFor(node), message);
  }

  /** Sends to every node (this one too), at the end of this event-loop turn. */
  broadcast(message: NodeMessage): void {
    if (this.broadcastBatch === undefined) {
      this.broadcastBatch = encoding.createEncoder();
      this.scheduleFlush();
    }
    writeNodeMessage(this.broadcastBatch, message);
  }

  /** Lets go of the link to a node that is gone (what was relayed with it has ended already). */
  forget(node: string): void {
    this.links.drop(node);
  }

  get self(): string {
    return this.nodeId;
  }

  /** Sends what is queued, then closes the links (each peer reads the last frames first) and the subscription. */
  async close(): Promise<void> {
    this.flush();
    await this.links.close();
    this.subscriber.disconnect();
  }

  private batchFor(node: string): encoding.Encoder {
    let frames = this.outbox.get(node);
    if (frames === undefined) {
      frames = [];
      this.outbox.set(node, frames);
      this.scheduleFlush();
    }
    let frame = frames[frames.length - 1];
    if (frame === undefined || encoding.length(frame) >= SOFT_FRAME_BYTES) {
      frame = encoding.createEncoder();
      // Room for the length, written when the frame is done.
      encoding.writeUint32(frame, 0);
      frames.push(frame);
    }
    return frame;
  }

  private scheduleFlush(): void {
    this.flushScheduled ??= setImmediate(() => this.flush());
  }

  private flush(): void {
    if (this.flushScheduled !== undefined) clearImmediate(this.flushScheduled);
    this.flushScheduled = undefined;
    // Swapped first: a lost link reported while sending may make the handlers send more (next turn).
    const outbox = this.outbox;
    this.outbox = new Map();
    const broadcast = this.broadcastBatch;
    this.broadcastBatch = undefined;
    for (const [node, frames] of outbox) this.links.send(node, frames.map(finishFrame));
    if (broadcast !== undefined) {
      const bytes = encoding.toUint8Array(broadcast);
      this.redis.publish(BROADCAST, Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)).catch((error: unknown) => {
        // Only sessions ended elsewhere are broadcast, and every node also polls the directory for them.
        this.logger.debug({ err: error }, 'could not send to the cluster broadcast channel');
      });
    }
  }
}

/** The frame's bytes, its length header filled in. */
function finishFrame(frame: encoding.Encoder): Uint8Array {
  const bytes = encoding.toUint8Array(frame);
  new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).setUint32(0, bytes.byteLength - FRAME_HEADER_BYTES);
  return bytes;
}
