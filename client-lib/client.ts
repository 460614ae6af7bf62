import type { z } from 'zod';
import type {
  AuthResponse,
  AvatarUploadResponse,
  BackupCodesResponse,
  DmChannel,
  DmChannelListEntry,
  LoginResponse,
  Message,
  MessagingSettings,
  NotesChannel,
  PrivateUser,
  PublicUser,
  Relationship,
  Session,
  TotpSetupResponse,
  UserFeatures,
  UserSettings,
  createMessageBodySchema,
  loginBodySchema,
  loginTotpBodySchema,
  openDmBodySchema,
  putRelationshipBodySchema,
  registerBodySchema,
  totpConfirmBodySchema,
  totpEnableBodySchema,
  totpSetupBodySchema,
  updateMeBodySchema,
  updateMessageBodySchema,
  updateMessagingSettingsBodySchema,
  updateSettingsBodySchema,
} from '../shared/index.ts';
import type { forgotPasswordBodySchema, resetPasswordBodySchema, verifyEmailBodySchema } from '../shared/schemas/recovery.ts';
import { ApiError } from './errors.ts';
import { openNotes, type Notes, type OpenNotesOptions } from './notes.ts';
import { openSettings, type OpenSettingsOptions, type Settings } from './settings.ts';

/** Request bodies are what the server's zod schemas accept (their input side). */
export type RegisterRequest = z.input<typeof registerBodySchema>;
export type LoginRequest = z.input<typeof loginBodySchema>;
/** The ticket `login()` answered, with a TOTP `code` or a `backup_code` (exactly one, as the schema checks). */
export type LoginTotpRequest = z.input<typeof loginTotpBodySchema> & ({ code: string; backup_code?: undefined } | { backup_code: string; code?: undefined });
export type SetupTotpRequest = z.input<typeof totpSetupBodySchema>;
export type EnableTotpRequest = z.input<typeof totpEnableBodySchema>;
/** `code` is a TOTP code or a backup code. */
export type ConfirmTotpRequest = z.input<typeof totpConfirmBodySchema>;
export type UpdateMeRequest = z.input<typeof updateMeBodySchema>;
export type UpdateSettingsRequest = z.input<typeof updateSettingsBodySchema>;
export type UpdateMessagingSettingsRequest = z.input<typeof updateMessagingSettingsBodySchema>;
export type PutRelationshipRequest = z.input<typeof putRelationshipBodySchema>;
export type OpenDmRequest = z.input<typeof openDmBodySchema>;
export type CreateMessageRequest = z.input<typeof createMessageBodySchema>;
export type UpdateMessageRequest = z.input<typeof updateMessageBodySchema>;
export type VerifyEmailRequest = z.input<typeof verifyEmailBodySchema>;
export type ForgotPasswordRequest = z.input<typeof forgotPasswordBodySchema>;
export type ResetPasswordRequest = z.input<typeof resetPasswordBodySchema>;
/** `limit` 1-100 (default 50), `before` a message id: the page of messages older than it. */
export interface ListMessagesRequest {
  limit?: number;
  before?: string;
}

export type FetchLike = (
  input: string,
  init: { method: string; headers: Record<string, string>; body?: string | Uint8Array | Blob | FormData },
) => Promise<Response>;

export interface PlexichatClientOptions {
  /** e.g. https://chat.example.org (no trailing slash needed). */
  baseUrl: string;
  token?: string;
  /** Defaults to the global fetch (Node 20+, browsers, React Native). */
  fetch?: FetchLike;
}

/** The avatar bytes and their type, as served. */
export interface AvatarImageResponse {
  bytes: Uint8Array;
  contentType: string;
  etag: string | null;
}

/** Told when the token or the server address changes, so sync connections can retry at once. */
type EndpointListener = () => void;

/**
 * Typed client for every REST route of the server. An answer that is not 2xx throws `ApiError`;
 * a request that gets no answer throws what `fetch` throws (a TypeError where the server is not
 * reachable).
 */
export class PlexichatClient {
  #baseUrl: string;
  #token: string | undefined;
  readonly #fetch: FetchLike;
  readonly #endpointListeners = new Set<EndpointListener>();

  constructor(options: PlexichatClientOptions) {
    this.#baseUrl = options.baseUrl.replace(/\/+$/, '');
    this.#token = options.token;
    this.#fetch = options.fetch ?? ((input, init) => fetch(input, init));
  }

  get baseUrl(): string {
    return this.#baseUrl;
  }

  get token(): string | undefined {
    return this.#token;
  }

  /**
   * Replaces the session token. Sync connections that are down (backing off, or stopped by a
   * refusal) retry with it at once; one that is open or opening keeps its socket.
   */
  setToken(token: string | undefined): void {
    this.#token = token;
    for (const listener of this.#endpointListeners) listener();
  }

  /** Points the client at another address of the server (moved, or restarted elsewhere). */
  setBaseUrl(baseUrl: string): void {
    this.#baseUrl = baseUrl.replace(/\/+$/, '');
    for (const listener of this.#endpointListeners) listener();
  }

  /** Called whenever the token or the base URL changes; returns an unsubscribe function. */
  onEndpointChange(listener: EndpointListener): () => void {
    this.#endpointListeners.add(listener);
    return () => this.#endpointListeners.delete(listener);
  }

  // --- auth ---------------------------------------------------------------------------------

  /** Creates an account and keeps its session token for later calls. */
  async register(body: RegisterRequest): Promise<AuthResponse> {
    const answer = await this.#json<AuthResponse>('POST', '/auth/register', body, false);
    this.setToken(answer.token);
    return answer;
  }

  /**
   * Signs in (by username or email) and keeps the session token for later calls. `device_name`
   * names the session in `listSessions()`; without it the server derives one from the User-Agent.
   * An account with 2FA answers `{ mfa_required: true, ticket }` instead, and no token: finish with
   * `loginTotp`.
   */
  async login(body: LoginRequest): Promise<LoginResponse> {
    const answer = await this.#json<LoginResponse>('POST', '/auth/login', body, false);
    if ('token' in answer) this.setToken(answer.token);
    return answer;
  }

  /**
   * The second step of a 2FA login: the ticket `login()` answered and a TOTP or backup code; keeps
   * the session token. A 401 `invalid_second_factor` means a wrong code or a ticket that can no
   * longer be used (5 minutes, 5 attempts): ask for the code again, or sign in again.
   */
  async loginTotp(body: LoginTotpRequest): Promise<AuthResponse> {
    const answer = await this.#json<AuthResponse>('POST', '/auth/login/totp', body, false);
    this.setToken(answer.token);
    return answer;
  }

  /**
   * Ends this session and forgets its token. A 401 counts as done: the server already refuses the
   * token (signed out before, or a sign-out whose storage it is still retrying). A 503 throws and
   * keeps the token, so the caller can repeat the logout after `Retry-After`.
   */
  async logout(): Promise<void> {
    try {
      await this.#request('POST', '/auth/logout');
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 401)) throw error;
    }
    this.setToken(undefined);
  }

  /** The account's sessions (signed-in devices), most recently used first; `current` marks this one. */
  listSessions(): Promise<Session[]> {
    return this.#json('GET', '/auth/sessions');
  }

  /**
   * Ends one session: its token stops working and its sync sockets close at once. Someone else's
   * session, or one already ended, throws `ApiError` 404 `not_found`. Ending this client's own
   * session is a logout on the server, but the client keeps its token: prefer `logout()` for that.
   */
  async deleteSession(sessionId: string): Promise<void> {
    await this.#request('DELETE', `/auth/sessions/${encodeURIComponent(sessionId)}`);
  }

  /** Ends every session of the account but this client's. */
  async revokeOtherSessions(): Promise<void> {
    await this.#request('POST', '/auth/sessions/revoke-others');
  }

  // --- email verification and password reset -----------------------------------------------

  /** Verifies the address a verification mail went to, with the token from it (no session needed). */
  async verifyEmail(body: VerifyEmailRequest): Promise<void> {
    await this.#request('POST', '/auth/verify-email', JSON.stringify(body), false, true);
  }

  /**
   * Mails the signed-in user a new verification link (older ones stop working). Throws `ApiError`
   * 409 `email_already_verified`, 429 past five an hour, 503 `mail_not_sent` when the mail could not go.
   */
  async resendVerification(): Promise<void> {
    await this.#request('POST', '/auth/verify-email/resend');
  }

  /** Asks for a password-reset mail. Succeeds the same whether or not an account has the address. */
  async forgotPassword(body: ForgotPasswordRequest): Promise<void> {
    await this.#request('POST', '/auth/password/forgot', JSON.stringify(body), false, true);
  }

  /**
   * Sets a new password with the token from a reset mail. Every session of that account ends,
   * this client's too if it was signed in as it: sign in again with the new password.
   */
  async resetPassword(body: ResetPasswordRequest): Promise<void> {
    await this.#request('POST', '/auth/password/reset', JSON.stringify(body), false, true);
  }

  health(): Promise<{ status: 'ok' }> {
    return this.#json('GET', '/health', undefined, false);
  }

  // --- users --------------------------------------------------------------------------------

  me(): Promise<PrivateUser> {
    return this.#json('GET', '/users/@me');
  }

  updateMe(body: UpdateMeRequest): Promise<PrivateUser> {
    return this.#json('PATCH', '/users/@me', body);
  }

  getUser(userId: string): Promise<PublicUser> {
    return this.#json('GET', `/users/${encodeURIComponent(userId)}`);
  }

  searchUser(username: string): Promise<PublicUser> {
    return this.#json('GET', `/users/search?username=${encodeURIComponent(username)}`);
  }

  /** The caller's badges, tier and feature flags (each flag the server defines, evaluated for them). */
  features(): Promise<UserFeatures> {
    return this.#json('GET', '/users/@me/features');
  }

  // --- two-factor authentication (TOTP) -----------------------------------------------------

  /** Starts (or restarts) a 2FA setup: the secret to show (QR code of `otpauth_url`), pending until enabled. */
  setupTotp(body: SetupTotpRequest): Promise<TotpSetupResponse> {
    return this.#json('POST', '/users/@me/totp/setup', body);
  }

  /** A code of the pending secret turns 2FA on; the backup codes are shown to the user once. */
  enableTotp(body: EnableTotpRequest): Promise<BackupCodesResponse> {
    return this.#json('POST', '/users/@me/totp/enable', body);
  }

  async disableTotp(body: ConfirmTotpRequest): Promise<void> {
    await this.#request('POST', '/users/@me/totp/disable', JSON.stringify(body), true, true);
  }

  /** A new set of backup codes; every older one stops working. */
  regenerateBackupCodes(body: ConfirmTotpRequest): Promise<BackupCodesResponse> {
    return this.#json('POST', '/users/@me/totp/backup-codes', body);
  }

  // --- settings -----------------------------------------------------------------------------

  getSettings(): Promise<UserSettings> {
    return this.#json('GET', '/users/@me/settings');
  }

  /** Sets the given keys; a `null` value removes its key. */
  updateSettings(patch: UpdateSettingsRequest): Promise<UserSettings> {
    return this.#json('PATCH', '/users/@me/settings', patch);
  }

  getMessagingSettings(): Promise<MessagingSettings> {
    return this.#json('GET', '/users/@me/messaging-settings');
  }

  updateMessagingSettings(patch: UpdateMessagingSettingsRequest): Promise<MessagingSettings> {
    return this.#json('PATCH', '/users/@me/messaging-settings', patch);
  }

  // --- avatars ------------------------------------------------------------------------------

  /** Uploads an image (PNG, JPEG, WebP, GIF); the server decides the format from the bytes. */
  async uploadAvatar(image: Uint8Array | Blob, filename = 'avatar'): Promise<AvatarUploadResponse> {
    const form = new FormData();
    form.append('file', image instanceof Blob ? image : new Blob([image]), filename);
    const response = await this.#request('POST', '/users/@me/avatar', form);
    return (await response.json()) as AvatarUploadResponse;
  }

  async deleteAvatar(): Promise<void> {
    await this.#request('DELETE', '/users/@me/avatar');
  }

  /** The URL an `<img>` can use (no auth needed). */
  avatarUrl(userId: string): string {
    return `${this.#baseUrl}/avatars/users/${encodeURIComponent(userId)}`;
  }

  async getAvatar(userId: string): Promise<AvatarImageResponse> {
    const response = await this.#request('GET', `/avatars/users/${encodeURIComponent(userId)}`, undefined, false);
    return {
      bytes: new Uint8Array(await response.arrayBuffer()),
      contentType: response.headers.get('content-type') ?? 'application/octet-stream',
      etag: response.headers.get('etag'),
    };
  }

  // --- relationships and DM channels --------------------------------------------------------

  listRelationships(): Promise<Relationship[]> {
    return this.#json('GET', '/users/@me/relationships');
  }

  /** `{ type: 'friend' }` sends or accepts a friend request, `{ type: 'block' }` blocks. */
  putRelationship(userId: string, body: PutRelationshipRequest): Promise<Relationship> {
    return this.#json('PUT', `/users/@me/relationships/${encodeURIComponent(userId)}`, body);
  }

  async deleteRelationship(userId: string): Promise<void> {
    await this.#request('DELETE', `/users/@me/relationships/${encodeURIComponent(userId)}`);
  }

  listChannels(): Promise<DmChannelListEntry[]> {
    return this.#json('GET', '/users/@me/channels');
  }

  openDm(body: OpenDmRequest): Promise<DmChannel> {
    return this.#json('POST', '/users/@me/channels', body);
  }

  // --- notes (REST) -------------------------------------------------------------------------

  notesChannel(): Promise<NotesChannel> {
    return this.#json('GET', '/users/@me/notes');
  }

  listMessages(channelId: string, query: ListMessagesRequest = {}): Promise<Message[]> {
    const params = new URLSearchParams();
    if (query.limit !== undefined) params.set('limit', String(query.limit));
    if (query.before !== undefined) params.set('before', query.before);
    const qs = params.size > 0 ? `?${params.toString()}` : '';
    return this.#json('GET', `/channels/${encodeURIComponent(channelId)}/messages${qs}`);
  }

  createMessage(channelId: string, body: CreateMessageRequest): Promise<Message> {
    return this.#json('POST', `/channels/${encodeURIComponent(channelId)}/messages`, body);
  }

  updateMessage(channelId: string, messageId: string, body: UpdateMessageRequest): Promise<Message> {
    return this.#json('PATCH', `/channels/${encodeURIComponent(channelId)}/messages/${encodeURIComponent(messageId)}`, body);
  }

  async deleteMessage(channelId: string, messageId: string): Promise<void> {
    await this.#request('DELETE', `/channels/${encodeURIComponent(channelId)}/messages/${encodeURIComponent(messageId)}`);
  }

  // --- sync ---------------------------------------------------------------------------------

  /** The WebSocket URL of one of the user's documents (`settings` or the notes channel id). */
  syncUrl(doc: string): string {
    return `${this.#baseUrl.replace(/^http/, 'ws')}/sync/${encodeURIComponent(doc)}?ack=1`;
  }

  /** Opens the user's notes document: offline-first, persisted in `store`, synced when online. */
  openNotes(options: OpenNotesOptions): Promise<Notes> {
    return openNotes(this, options);
  }

  /** Opens the user's settings document: offline-first like notes, in its own `store`. */
  openSettings(options: OpenSettingsOptions): Promise<Settings> {
    return openSettings(this, options);
  }

  // --- plumbing -----------------------------------------------------------------------------

  async #json<T>(method: string, path: string, body?: unknown, auth = true): Promise<T> {
    const response = await this.#request(method, path, body === undefined ? undefined : JSON.stringify(body), auth, body !== undefined);
    return (await response.json()) as T;
  }

  async #request(method: string, path: string, body?: string | FormData, auth = true, isJson = false): Promise<Response> {
    const headers: Record<string, string> = { accept: 'application/json' };
    if (isJson) headers['content-type'] = 'application/json';
    if (auth && this.#token !== undefined) headers.authorization = `Bearer ${this.#token}`;
    const response = await this.#fetch(this.#baseUrl + path, body === undefined ? { method, headers } : { method, headers, body });
    if (!response.ok) throw ApiError.fromResponse(response.status, await response.text());
    return response;
  }
}
