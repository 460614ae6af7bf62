import type { ForwardedRequest, RelayedAnswer } from '../core/placement.ts';
import type { NodeBus } from './bus.ts';
import { unavailable } from './unavailable.ts';
import type { NodeMessage } from './wire.ts';

/** A relayed REST request whose answer has not come after this long is answered 503. */
const FORWARD_TIMEOUT_MS = 30_000;
const EMPTY = new Uint8Array(0);

interface Pending {
  node: string;
  resolve: (answer: RelayedAnswer) => void;
  reject: (error: unknown) => void;
  timer: NodeJS.Timeout;
}

/** Serves a REST request relayed from another node (http/dispatch.ts); never rejects. */
export type ServeForwarded = (request: ForwardedRequest, body: Uint8Array | undefined) => Promise<RelayedAnswer>;

/**
 * REST requests between nodes: the edge node sends a signed-in request to the owner of its user
 * and waits for the answer (`forward`); the owner serves what it is sent (`serve`).
 */
export class RestRelay {
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;

  constructor(private readonly bus: NodeBus) {}

  /** The nodes requests are waiting on. */
  waitingOn(): Iterable<string> {
    return [...this.pending.values()].map((pending) => pending.node);
  }

  forward(node: string, request: ForwardedRequest, body: Uint8Array | undefined): Promise<RelayedAnswer> {
    return new Promise((resolve, reject) => {
      const id = this.nextId++;
      const timer = setTimeout(() => this.settle(id, undefined, unavailable('The server holding your data did not answer in time; retry')), FORWARD_TIMEOUT_MS);
      this.pending.set(id, { node, resolve, reject, timer });
      // Lost on the way (the node is gone, the link dropped): the node's link-loss handler fails it.
      this.bus.send(node, { kind: 'http-request', id, from: this.bus.self, request: JSON.stringify(request), body: body ?? EMPTY });
    });
  }

  /** Owner side: serves a request and sends its answer back. */
  serve(message: Extract<NodeMessage, { kind: 'http-request' }>, serveForwarded: ServeForwarded): void {
    const request = JSON.parse(message.request) as ForwardedRequest;
    void serveForwarded(request, message.body.byteLength > 0 ? message.body : undefined).then((relayed) => {
      // If it is lost, the request times out on the edge node (503).
      this.bus.send(message.from, { kind: 'http-answer', id: message.id, answer: JSON.stringify(relayed.answer), body: relayed.body });
    });
  }

  /** Edge side: the answer came. */
  answered(message: Extract<NodeMessage, { kind: 'http-answer' }>): void {
    this.settle(message.id, { answer: JSON.parse(message.answer) as RelayedAnswer['answer'], body: message.body });
  }

  /** Requests waiting on `node` (gone), or on any node when undefined, are answered 503 now. */
  fail(node: string | undefined, message: string): void {
    for (const [id, pending] of this.pending) if (node === undefined || pending.node === node) this.settle(id, undefined, unavailable(message));
  }

  private settle(id: number, answer: RelayedAnswer | undefined, error?: unknown): void {
    const pending = this.pending.get(id);
    if (pending === undefined) return;
    this.pending.delete(id);
    clearTimeout(pending.timer);
    if (answer !== undefined) pending.resolve(answer);
    else pending.reject(error);
  }
}
