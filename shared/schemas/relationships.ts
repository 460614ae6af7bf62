import { z } from 'zod';
import type { PublicUser } from './users.ts';

/** How the caller relates to another user, from the caller's side. */
export const RELATIONSHIP_TYPES = ['friend', 'incoming_request', 'outgoing_request', 'block'] as const;
export type RelationshipType = (typeof RELATIONSHIP_TYPES)[number];

/** An entry of `GET /users/@me/relationships`; `id` is the other user's id. */
export interface Relationship {
  id: string;
  type: RelationshipType;
  user: PublicUser;
}

/** `PUT /users/@me/relationships/{user_id}`: "friend" sends or accepts a request, "block" blocks. */
export const putRelationshipBodySchema = z.strictObject({
  type: z.enum(['friend', 'block']),
});
export type PutRelationshipBody = z.infer<typeof putRelationshipBodySchema>;
