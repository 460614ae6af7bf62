import { AppError } from './app-error.ts';
import type { Principal } from './principal.ts';

/**
 * Cluster mode: which node serves a user. Each user's file has one owner node at a time
 * (docs/cluster.md); a request or sync socket that reaches another node is relayed to it. On one
 * node there is no placement at all, and everything is served here.
 */
export interface Placement {
  /** Whether this node owns the user right now (no I/O). */
  owns(userId: string): boolean;
  /**
   * Whether this node owns the user right now (no I/O), counting it as a use: a request another
   * node relayed here keeps its user from being given up as idle, as one that came here does.
   */
  servesHere(userId: string): boolean;
  /**
   * Where to serve the user: 'here' at once when this node owns them; otherwise a promise of
   * 'here' (this node just claimed them) or the owner's node id. Rejects with an AppError (503)
   * when that cannot be known (Redis unreachable).
   */
  locate(userId: string): 'here' | Promise<'here' | { node: string }>;
  /** Gives back the claim of a new account whose file was not made after all (or was removed). */
  abandonNew(userId: string): Promise<void>;
}

/** A REST request relayed to the node that owns its user, as the edge node read (and authenticated) it. */
export interface ForwardedRequest {
  method: string;
  path: string;
  rawQuery: string;
  headers: [string, string][];
  remoteAddress: string;
  requestId: string;
  /** The user whose owner serves it: the caller's, or the one its route named (`placeBy`). */
  userId: string;
  /** The caller's session; null for a route without one (a login, a mailed token, an avatar). */
  principal: Principal | null;
}

/** The owner's answer, written by the edge node as it is; `misdirected`: that node does not own the request's user (any more). */
interface ForwardedAnswer {
  status: number;
  headers: Record<string, string>;
  misdirected?: boolean;
}

export interface RelayedAnswer {
  answer: ForwardedAnswer;
  body: Uint8Array;
}

/** Sends a request to the node `node` and resolves with its answer (503 AppError when it does not come). */
export type ForwardRequest = (node: string, request: ForwardedRequest, body: Uint8Array | undefined) => Promise<RelayedAnswer>;

/**
 * Cluster mode: the user is served by no node for a moment (an admin command holds them, handed
 * over by their owner, docs/cluster.md): 503 with `Retry-After: 1`; a sync socket closes with 1013.
 * Nothing can be relayed to a command.
 */
export class UserMovingError extends AppError {
  constructor() {
    super('service_unavailable', 'Your data is moving between servers right now; retry shortly', { headers: { 'Retry-After': '1' } });
  }
}
