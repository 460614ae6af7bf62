import { ERROR_CATALOGUE, type ErrorBody, type ErrorCode, type FieldError, isErrorCode } from '../shared/errors.ts';

/** What `code` is when the answer was not one of ours (a proxy's HTML page, a truncated body). */
export type ApiErrorCode = ErrorCode | 'unexpected_response';

/**
 * A request the server refused. `error` is the documented text (e.g. "User not found"), `code`
 * the stable snake_case code to branch on, `message` the human detail.
 */
export class ApiError extends Error {
  readonly status: number;
  readonly error: string;
  readonly code: ApiErrorCode;
  readonly errors: FieldError[] | undefined;

  constructor(status: number, body: { error: string; code: ApiErrorCode; message: string; errors?: FieldError[] | undefined }) {
    super(body.message);
    this.name = 'ApiError';
    this.status = status;
    this.error = body.error;
    this.code = body.code;
    this.errors = body.errors;
  }

  /** Builds the error from a response body, keeping what the server said when it is our shape. */
  static fromResponse(status: number, text: string): ApiError {
    const body = parseErrorBody(text);
    if (body) return new ApiError(status, body);
    // Not our error shape: say so rather than invent a documented text.
    return new ApiError(status, { error: `HTTP ${status}`, code: 'unexpected_response', message: text.slice(0, 200) });
  }
}

function parseErrorBody(text: string): ErrorBody | null {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return null;
  }
  if (typeof value !== 'object' || value === null) return null;
  const record = value as Record<string, unknown>;
  const { error, code, message, errors } = record;
  if (typeof error !== 'string' || !isErrorCode(code)) return null;
  return {
    error,
    code,
    message: typeof message === 'string' ? message : ERROR_CATALOGUE[code].error,
    ...(Array.isArray(errors) ? { errors: errors.filter(isFieldError) } : {}),
  };
}

function isFieldError(value: unknown): value is FieldError {
  if (typeof value !== 'object' || value === null) return false;
  const record = value as Record<string, unknown>;
  return typeof record.path === 'string' && typeof record.message === 'string';
}
