/** Who is calling: the user and the session behind a verified bearer token. */
export interface Principal {
  userId: string;
  sessionId: string;
}
