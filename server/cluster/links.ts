import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { once } from 'node:events';
import net from 'node:net';
import * as decoding from 'lib0/decoding';
import * as encoding from 'lib0/encoding';
import type { Logger } from 'pino';

/** Why messages for a node were lost: it is not there (gone), or the link to it failed (unreachable). */
export type LinkLoss = 'gone' | 'unreachable';

/** Where a node accepts links, as it advertises in its node key. */
export interface LinkAddress {
  host: string;
  port: number;
  /** The process holding the node id: a link made for one process is refused by the next. */
  instance: string;
}

export interface LinkSettings {
  nodeId: string;
  instance: string;
  /** The cluster's shared secret (cluster-key.ts). */
  key: Uint8Array;
  host: string;
  port: number;
  /** The largest frame sent or accepted once linked. */
  maxFrameBytes: number;
  /** Bytes waiting to go to one node past which its link is given up (reported lost) rather than grow. */
  maxQueuedBytes: number;
  /** Where a node listens (its node key), undefined when it has none; throws when that cannot be known. */
  locate(node: string): Promise<LinkAddress | undefined>;
}

export interface LinkHandlers {
  /** A frame from an authenticated node, in the order that node sent them. */
  onFrame(node: string, frame: Uint8Array): void;
  /** The link from `node` dropped: frames it sent may have been lost. */
  onInterrupted(node: string): void;
  /** Frames this node sent `node` were lost (reported once per failed link). */
  onLost(node: string, loss: LinkLoss): void;
}

/** Every frame on a link starts with its length (big-endian), then that many bytes. */
export const FRAME_HEADER_BYTES = 4;
const PROTOCOL = 'plexichat-link/3';
const NONCE_BYTES = 32;
/** Handshake frames are small: an unauthenticated peer is never buffered more than this. */
const HANDSHAKE_FRAME_BYTES = 1024;
const HANDSHAKE_TIMEOUT_MS = 5000;
/** Unauthenticated connections held at once; more are dropped as they come. */
const MAX_UNAUTHENTICATED = 64;
/** A peer whose machine vanished (no FIN, no RST) is noticed by TCP keepalive. */
const KEEPALIVE_MS = 10_000;
/** How long a node shutting down waits for the other nodes to take its last frames. */
const CLOSE_TIMEOUT_MS = 2000;
const REFUSED = 'refused a connection to the cluster port that is not a node of this cluster';

/**
 * Direct TCP links between the nodes of a cluster, for what they relay to each other (bus.ts).
 * Each node listens on its cluster port and opens one link to each node it sends to; a link
 * carries frames one way only, so what one node sends another arrives in order, and a node
 * reads its incoming links and writes its outgoing ones. A link starts with a challenge-response
 * on the cluster key both sides read from the shared data folder (HMAC-SHA256 over both nonces,
 * both node ids and the process that was meant), proving each side to the other; anything else
 * that connects is dropped. What a peer sends is bounded before and after (frame length,
 * handshake time, connections waiting), and a failed link is reported once, never retried
 * silently: the next frame for that node opens a new one.
 */
export class Links {
  private readonly outgoing = new Map<string, Outgoing>();
  /** The authenticated link from each node. */
  private readonly incoming = new Map<string, net.Socket>();
  private readonly sockets = new Set<net.Socket>();
  /** Where each node with an open link to this one accepts links, as its hello said (proven with the key). */
  private readonly replyAddresses = new Map<string, LinkAddress>();
  /** Where this node accepts links, as it tells the nodes it links to (`advertise`). */
  private advertised: LinkAddress | undefined;
  private unauthenticated = 0;
  private handlers: LinkHandlers | undefined;
  private closed = false;

  private constructor(
    private readonly settings: LinkSettings,
    private readonly server: net.Server,
    private readonly logger: Logger,
  ) {}

  /** Listens on the cluster port; links are refused until `serve`. */
  static async listen(settings: LinkSettings, logger: Logger): Promise<Links> {
    const server = net.createServer();
    const links = new Links(settings, server, logger);
    server.on('connection', (socket) => links.accept(socket));
    server.listen(settings.port, settings.host);
    await once(server, 'listening');
    return links;
  }

  get port(): number {
    const address = this.server.address();
    return address === null || typeof address === 'string' ? 0 : address.port;
  }

  serve(handlers: LinkHandlers): void {
    this.handlers = handlers;
  }

  /**
   * Where this node accepts links, told in every hello: a node this one links to can answer it
   * over a link of its own without looking it up in Redis (whose node key may be missing for a
   * moment, when Redis restarts without it).
   */
  advertise(address: LinkAddress): void {
    this.advertised = address;
  }

  /** Sends frames (each `FRAME_HEADER_BYTES` of length, then its bytes) to `node`, in one write. */
  send(node: string, frames: Uint8Array[]): void {
    const handlers = this.handlers;
    if (this.closed || handlers === undefined) return;
    let link = this.outgoing.get(node);
    if (link === undefined) {
      link = new Outgoing(
        node,
        this.settings,
        this.advertised,
        () => this.replyAddressOf(node),
        this.logger,
        (ended, loss) => {
          if (this.outgoing.get(node) === ended) this.outgoing.delete(node);
          if (!this.closed) handlers.onLost(node, loss);
        },
      );
      this.outgoing.set(node, link);
    }
    link.write(frames);
  }

  /**
   * Where `node` said it accepts links, while its own link to this node is open (it is alive): the
   * way back to a node that sent something, should its node key not say where it is.
   */
  private replyAddressOf(node: string): LinkAddress | undefined {
    const socket = this.incoming.get(node);
    return socket === undefined || socket.destroyed ? undefined : this.replyAddresses.get(node);
  }

  /** Lets go of the link to a node known to be gone, without reporting it (what depended on it ended already). */
  drop(node: string): void {
    const link = this.outgoing.get(node);
    this.outgoing.delete(node);
    link?.abandon();
  }

  /** Stops: the last frames go out first (each peer reads them before it sees this node's links close). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.server.close();
    await Promise.all([...this.outgoing.values()].map((link) => link.end()));
    this.outgoing.clear();
    for (const socket of this.sockets) socket.destroy();
  }

  private accept(socket: net.Socket): void {
    const handlers = this.handlers;
    if (this.closed || handlers === undefined || this.unauthenticated >= MAX_UNAUTHENTICATED) {
      socket.destroy();
      return;
    }
    this.unauthenticated += 1;
    this.sockets.add(socket);
    socket.setNoDelay(true);
    socket.setKeepAlive(true, KEEPALIVE_MS);
    const { nodeId, instance, key } = this.settings;
    const reader = new FrameReader(HANDSHAKE_FRAME_BYTES);
    let hello: Hello | undefined;
    let serverNonce: Uint8Array | undefined;
    let peer: string | undefined;
    const refuse = (why: string) => {
      this.logger.warn({ remote: `${socket.remoteAddress}:${socket.remotePort}`, why }, REFUSED);
      socket.destroy();
    };
    const timer = setTimeout(() => refuse('no handshake in time'), HANDSHAKE_TIMEOUT_MS);
    socket.on('data', (chunk: Buffer) => {
      try {
        reader.read(chunk, (frame) => {
          if (socket.destroyed) return;
          if (peer !== undefined) {
            handlers.onFrame(peer, frame);
          } else if (hello === undefined || serverNonce === undefined) {
            hello = readHello(frame);
            if (hello.to !== nodeId || hello.instance !== instance) {
              refuse(`meant for node ${hello.to} (process ${hello.instance}), which is not this one`);
              return;
            }
            serverNonce = randomBytes(NONCE_BYTES);
            socket.write(framed(writeChallenge(serverNonce, proof(key, 'server', hello, serverNonce))));
          } else {
            if (!sameProof(readProof(frame), proof(key, 'client', hello, serverNonce))) {
              refuse('wrong proof of the cluster key');
              return;
            }
            this.unauthenticated -= 1;
            clearTimeout(timer);
            peer = hello.from;
            reader.limit = this.settings.maxFrameBytes;
            const previous = this.incoming.get(peer);
            this.incoming.set(peer, socket);
            if (hello.reply !== undefined) this.replyAddresses.set(peer, hello.reply);
            // A node links anew only once its previous link failed: what that one carried may be lost.
            if (previous !== undefined) {
              previous.destroy();
              handlers.onInterrupted(peer);
            }
          }
        });
      } catch (error) {
        if (peer === undefined) {
          refuse(error instanceof Error ? error.message : String(error));
        } else {
          this.logger.warn({ err: error, node: peer }, 'dropped the link from a node that sent what this node cannot read');
          socket.destroy();
        }
      }
    });
    // 'close' follows every error.
    socket.on('error', () => undefined);
    socket.on('close', () => {
      if (peer === undefined) {
        this.unauthenticated -= 1;
        clearTimeout(timer);
      }
      this.sockets.delete(socket);
      if (peer === undefined || this.incoming.get(peer) !== socket) return;
      this.incoming.delete(peer);
      this.replyAddresses.delete(peer);
      if (!this.closed) handlers.onInterrupted(peer);
    });
  }
}

/** The link this node opens to another: found through its node key, authenticated, then written only. */
class Outgoing {
  private state: 'locating' | 'handshake' | 'open' | 'over' = 'locating';
  private socket: net.Socket | undefined;
  /** Frames sent before the link is open. */
  private queue: Uint8Array[] = [];
  private queued = 0;
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly node: string,
    private readonly settings: LinkSettings,
    /** Where this node accepts links (told in the hello). */
    private readonly advertised: LinkAddress | undefined,
    /** Where `node` accepts links by its own open link to this node, when its node key cannot say. */
    private readonly replyAddress: () => LinkAddress | undefined,
    private readonly logger: Logger,
    private readonly onEnd: (link: Outgoing, loss: LinkLoss) => void,
  ) {
    this.timer = setTimeout(() => this.fail('unreachable', 'not linked in time'), HANDSHAKE_TIMEOUT_MS);
    void this.connect();
  }

  write(frames: Uint8Array[]): void {
    if (this.state === 'over') return;
    for (const frame of frames) {
      if (frame.byteLength - FRAME_HEADER_BYTES > this.settings.maxFrameBytes) {
        // The other node would refuse it anyway; saying so here names the cause.
        this.logger.error({ node: this.node, bytes: frame.byteLength }, 'a message too large for a cluster link was not sent');
        this.fail('unreachable', 'a frame too large');
        return;
      }
    }
    if (this.state !== 'open' || this.socket === undefined) {
      for (const frame of frames) {
        this.queue.push(frame);
        this.queued += frame.byteLength;
      }
      if (this.queued > this.settings.maxQueuedBytes) this.fail('unreachable', 'too much waiting for the link to open');
      return;
    }
    writeAll(this.socket, frames);
    // A node that does not read (paused, overloaded) is given up rather than buffered without end.
    if (this.socket.writableLength > this.settings.maxQueuedBytes) this.fail('unreachable', 'the node does not read fast enough');
  }

  /** Ends the link after what was written has gone out (a node shutting down). */
  async end(): Promise<void> {
    const socket = this.socket;
    const open = this.state === 'open';
    this.stop();
    if (socket === undefined || !open) {
      socket?.destroy();
      return;
    }
    const closed = once(socket, 'close');
    socket.end();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([closed, new Promise((resolve) => (timer = setTimeout(resolve, CLOSE_TIMEOUT_MS)))]);
    clearTimeout(timer);
    socket.destroy();
  }

  /** Drops the link without reporting a loss. */
  abandon(): void {
    this.stop();
    this.socket?.destroy();
  }

  private stop(): void {
    this.state = 'over';
    clearTimeout(this.timer);
    this.queue = [];
  }

  private async connect(): Promise<void> {
    let address: LinkAddress | undefined;
    try {
      address = (await this.settings.locate(this.node)) ?? this.replyAddress();
    } catch (error) {
      address = this.replyAddress();
      if (address === undefined) {
        this.fail('unreachable', error instanceof Error ? error.message : String(error));
        return;
      }
    }
    if (this.state === 'over') return;
    if (address === undefined) {
      this.fail('gone', 'no node key');
      return;
    }
    const { nodeId, key } = this.settings;
    const hello: Hello = { from: nodeId, to: this.node, instance: address.instance, nonce: randomBytes(NONCE_BYTES), reply: this.advertised };
    const socket = net.connect({ host: address.host, port: address.port });
    this.socket = socket;
    this.state = 'handshake';
    socket.setNoDelay(true);
    socket.setKeepAlive(true, KEEPALIVE_MS);
    socket.write(framed(writeHello(hello)));
    const reader = new FrameReader(HANDSHAKE_FRAME_BYTES);
    let refused = false;
    socket.on('data', (chunk: Buffer) => {
      try {
        reader.read(chunk, (frame) => {
          if (this.state !== 'handshake') throw new Error('the node wrote on a link it only reads');
          const challenge = readChallenge(frame);
          if (!sameProof(challenge.proof, proof(key, 'server', hello, challenge.nonce))) throw new Error('the node did not prove the cluster key');
          clearTimeout(this.timer);
          this.state = 'open';
          const first = [framed(writeProof(proof(key, 'client', hello, challenge.nonce))), ...this.queue];
          this.queue = [];
          this.queued = 0;
          writeAll(socket, first);
        });
      } catch (error) {
        this.fail('unreachable', error instanceof Error ? error.message : String(error));
      }
    });
    socket.on('error', (error: NodeJS.ErrnoException) => {
      // Nothing listens where the node said it does: that process is gone.
      if (error.code === 'ECONNREFUSED') refused = true;
      this.logger.debug({ err: error, node: this.node }, 'a cluster link failed');
    });
    socket.on('close', () => this.fail(refused ? 'gone' : 'unreachable', 'closed'));
  }

  private fail(loss: LinkLoss, why: string): void {
    if (this.state === 'over') return;
    this.logger.debug({ node: this.node, loss, why }, 'lost the link to a node');
    this.abandon();
    this.onEnd(this, loss);
  }
}

function writeAll(socket: net.Socket, frames: Uint8Array[]): void {
  if (frames.length === 1) {
    socket.write(frames[0] as Uint8Array);
    return;
  }
  // One system call for the lot.
  socket.cork();
  for (const frame of frames) socket.write(frame);
  socket.uncork();
}

/**
 * Cuts a stream into frames. A frame's bytes are a view into what was read when they came in one
 * piece (the usual case), else a buffer of the announced length filled as they come: never more
 * buffered than one frame of at most `limit` bytes.
 */
class FrameReader {
  private readonly header = Buffer.alloc(FRAME_HEADER_BYTES);
  private headerFill = 0;
  private frame: Buffer | undefined;
  private frameFill = 0;

  constructor(public limit: number) {}

  /** Calls `onFrame` for each whole frame; throws on a frame longer than the limit. */
  read(chunk: Buffer, onFrame: (frame: Uint8Array) => void): void {
    let offset = 0;
    while (offset < chunk.length) {
      if (this.frame === undefined) {
        let length: number;
        if (this.headerFill === 0 && chunk.length - offset >= FRAME_HEADER_BYTES) {
          length = chunk.readUInt32BE(offset);
          offset += FRAME_HEADER_BYTES;
        } else {
          const taken = chunk.copy(this.header, this.headerFill, offset, offset + FRAME_HEADER_BYTES - this.headerFill);
          this.headerFill += taken;
          offset += taken;
          if (this.headerFill < FRAME_HEADER_BYTES) return;
          this.headerFill = 0;
          length = this.header.readUInt32BE(0);
        }
        if (length > this.limit) throw new Error(`a frame of ${length} bytes, over the limit of ${this.limit}`);
        if (chunk.length - offset >= length) {
          onFrame(chunk.subarray(offset, offset + length));
          offset += length;
          continue;
        }
        this.frame = Buffer.allocUnsafe(length);
        this.frameFill = 0;
      }
      const taken = chunk.copy(this.frame, this.frameFill, offset, Math.min(chunk.length, offset + this.frame.length - this.frameFill));
      this.frameFill += taken;
      offset += taken;
      if (this.frameFill === this.frame.length) {
        const frame = this.frame;
        this.frame = undefined;
        onFrame(frame);
      }
    }
  }
}

function framed(payload: Uint8Array): Buffer {
  const frame = Buffer.allocUnsafe(FRAME_HEADER_BYTES + payload.byteLength);
  frame.writeUInt32BE(payload.byteLength, 0);
  frame.set(payload, FRAME_HEADER_BYTES);
  return frame;
}

/** The first frame of a link: who connects, to which node and process, and its nonce. */
interface Hello {
  from: string;
  to: string;
  instance: string;
  nonce: Uint8Array;
  /** Where the sender accepts links (absent: it does not say). */
  reply: LinkAddress | undefined;
}

function writeHello(hello: Hello): Uint8Array {
  const e = encoding.createEncoder();
  encoding.writeVarString(e, PROTOCOL);
  writeHelloFields(e, hello);
  return encoding.toUint8Array(e);
}

/** The hello's fields, in the hello and in both proofs (so nobody without the key can change one). */
function writeHelloFields(e: encoding.Encoder, hello: Hello): void {
  encoding.writeVarString(e, hello.from);
  encoding.writeVarString(e, hello.to);
  encoding.writeVarString(e, hello.instance);
  encoding.writeVarUint8Array(e, hello.nonce);
  // Port 0 says "no address": no node accepts links there.
  encoding.writeVarString(e, hello.reply?.host ?? '');
  encoding.writeVarUint(e, hello.reply?.port ?? 0);
  encoding.writeVarString(e, hello.reply?.instance ?? '');
}

function readHello(frame: Uint8Array): Hello {
  const d = decoding.createDecoder(frame);
  if (decoding.readVarString(d) !== PROTOCOL) throw new Error('not the link protocol of this version');
  const from = decoding.readVarString(d);
  const to = decoding.readVarString(d);
  const instance = decoding.readVarString(d);
  const nonce = decoding.readVarUint8Array(d);
  const reply = { host: decoding.readVarString(d), port: decoding.readVarUint(d), instance: decoding.readVarString(d) };
  if (nonce.byteLength !== NONCE_BYTES || decoding.hasContent(d)) throw new Error('a malformed hello');
  if (reply.port > 65535) throw new Error('a malformed hello');
  return { from, to, instance, nonce, reply: reply.port === 0 || reply.host === '' ? undefined : reply };
}

function writeChallenge(nonce: Uint8Array, serverProof: Uint8Array): Uint8Array {
  const e = encoding.createEncoder();
  encoding.writeVarUint8Array(e, nonce);
  encoding.writeVarUint8Array(e, serverProof);
  return encoding.toUint8Array(e);
}

function readChallenge(frame: Uint8Array): { nonce: Uint8Array; proof: Uint8Array } {
  const d = decoding.createDecoder(frame);
  const challenge = { nonce: decoding.readVarUint8Array(d), proof: decoding.readVarUint8Array(d) };
  if (challenge.nonce.byteLength !== NONCE_BYTES || decoding.hasContent(d)) throw new Error('a malformed challenge');
  return challenge;
}

function writeProof(clientProof: Uint8Array): Uint8Array {
  const e = encoding.createEncoder();
  encoding.writeVarUint8Array(e, clientProof);
  return encoding.toUint8Array(e);
}

function readProof(frame: Uint8Array): Uint8Array {
  const d = decoding.createDecoder(frame);
  const clientProof = decoding.readVarUint8Array(d);
  if (decoding.hasContent(d)) throw new Error('a malformed proof');
  return clientProof;
}

/**
 * What each side proves: the HMAC of everything the link is about under the cluster key. Both
 * nonces make it fresh (a recorded proof is worth nothing); the side's role keeps one side's
 * proof from being replayed as the other's; the node ids and process keep it to this link.
 */
function proof(key: Uint8Array, role: 'server' | 'client', hello: Hello, serverNonce: Uint8Array): Uint8Array {
  const e = encoding.createEncoder();
  encoding.writeVarString(e, `${PROTOCOL} ${role}`);
  encoding.writeVarUint8Array(e, serverNonce);
  writeHelloFields(e, hello);
  return createHmac('sha256', key).update(encoding.toUint8Array(e)).digest();
}

function sameProof(given: Uint8Array, expected: Uint8Array): boolean {
  return given.byteLength === expected.byteLength && timingSafeEqual(given, expected);
}
