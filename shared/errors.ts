/**
 * The one error catalogue. Each failure has a stable snake_case `code`; the HTTP status and the
 * `error` text are fixed per code. Where the Users API spec documents a failure, its status and
 * text are used word for word; the rest follow the rules for undocumented cases in docs/errors.md
 * (which also says when each code is answered).
 */
export const ERROR_CATALOGUE = {
  // Documented in the Users API spec.
  invalid_input: { status: 400, error: 'Invalid input' },
  weak_password: { status: 400, error: 'Weak password' },
  missing_current_password: { status: 400, error: 'Missing current_password' },
  // A wrong current_password is a validation failure of the body, not an auth failure (400, not
  // 401), so a client never mistakes it for an expired session.
  invalid_current_password: { status: 400, error: 'Invalid input' },
  already_exists: { status: 409, error: 'Already exists' },
  invalid_file_type: { status: 400, error: 'Invalid file type' },
  file_too_large: { status: 400, error: 'File too large' },
  recipient_id_required: { status: 400, error: 'recipient_id required' },
  invalid_recipient_id: { status: 400, error: 'Invalid recipient ID' },
  cannot_message: { status: 403, error: 'Cannot message' },
  user_not_found: { status: 404, error: 'User not found' },
  username_required: { status: 400, error: 'Username required' },
  invalid_user_id: { status: 400, error: 'Invalid user ID' },
  // DM channels and relationships: undocumented cases reuse the documented texts where they fit.
  // A DM with yourself is the notes channel, not a DM: the id is well-formed but not a valid recipient.
  cannot_dm_self: { status: 400, error: 'Invalid recipient ID' },
  cannot_relate_to_self: { status: 400, error: 'Invalid user ID' },
  // One body for every refused friend request, so it never says whether (or who) blocked whom.
  cannot_add_friend: { status: 403, error: 'Cannot add friend' },
  // Authentication.
  invalid_credentials: { status: 401, error: 'Invalid credentials' },
  unauthorized: { status: 401, error: 'Unauthorized' },
  // Generic HTTP failures.
  // Framing the server will not guess at (e.g. two Content-Length headers): the connection is closed.
  bad_request: { status: 400, error: 'Bad request' },
  invalid_json: { status: 400, error: 'Invalid JSON' },
  not_found: { status: 404, error: 'Not found' },
  method_not_allowed: { status: 405, error: 'Method not allowed' },
  unsupported_media_type: { status: 415, error: 'Unsupported media type' },
  payload_too_large: { status: 413, error: 'Payload too large' },
  too_many_requests: { status: 429, error: 'Too many requests' },
  internal_error: { status: 500, error: 'Internal error' },
  service_unavailable: { status: 503, error: 'Service unavailable' },
  // Avatars: limits on what an image decodes to are size limits too, so they keep the documented
  // text; their own codes let clients tell them apart (and do not close the connection).
  image_too_large: { status: 400, error: 'File too large' },
  too_many_frames: { status: 400, error: 'File too large' },
  avatar_not_found: { status: 404, error: 'Not found' },
  // Two-factor authentication (TOTP). On the 2FA routes a wrong password or code is a validation
  // failure of the body (400 `Invalid input`, like invalid_current_password), never a 401: the
  // session is fine, and a client must not sign the user out over a typo.
  invalid_password: { status: 400, error: 'Invalid input' },
  // Wrong, already used (replayed), or older than the last code used: one answer for all three.
  invalid_totp_code: { status: 400, error: 'Invalid input' },
  totp_not_set_up: { status: 400, error: 'Invalid input' },
  totp_not_enabled: { status: 400, error: 'Invalid input' },
  totp_already_enabled: { status: 409, error: 'Already exists' },
  // The second step of a login: one body for a wrong, replayed or old code, a used or unknown
  // backup code, and a ticket that is forged, used, expired or out of attempts, so a ticket cannot
  // be probed. The text is login's: this is a login that failed.
  invalid_second_factor: { status: 401, error: 'Invalid credentials' },
  // Email verification and password reset. One answer for a token that is unknown, expired, spent,
  // of the other kind, or mailed to an address the account no longer has: telling them apart helps
  // only someone trying tokens. The undocumented cases reuse the nearest documented texts.
  invalid_mail_token: { status: 400, error: 'Invalid input' },
  email_already_verified: { status: 409, error: 'Already exists' },
  // A mail the caller asked for (a resend) that the mail server or the outbox did not take.
  mail_not_sent: { status: 503, error: 'Service unavailable' },
} as const satisfies Record<string, { status: number; error: string }>;

export type ErrorCode = keyof typeof ERROR_CATALOGUE;

/** One field-level problem, e.g. `{ path: "username", message: "Too short" }`. */
export interface FieldError {
  path: string;
  message: string;
}

/** The body of every error response. */
export interface ErrorBody {
  error: string;
  code: ErrorCode;
  message: string;
  errors?: FieldError[];
}

export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === 'string' && Object.hasOwn(ERROR_CATALOGUE, value);
}
