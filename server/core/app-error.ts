import { ERROR_CATALOGUE, type ErrorBody, type ErrorCode, type FieldError } from '../../shared/errors.ts';

/** A failure a handler reports on purpose: answered with the catalogue's status and text. */
export class AppError extends Error {
  readonly code: ErrorCode;
  readonly errors: FieldError[] | undefined;
  readonly headers: Record<string, string>;

  constructor(code: ErrorCode, message?: string, options: { errors?: FieldError[]; headers?: Record<string, string> } = {}) {
    super(message ?? ERROR_CATALOGUE[code].error);
    this.name = 'AppError';
    this.code = code;
    this.errors = options.errors;
    this.headers = options.headers ?? {};
  }

  get status(): number {
    return ERROR_CATALOGUE[this.code].status;
  }

  toBody(): ErrorBody {
    const body: ErrorBody = { error: ERROR_CATALOGUE[this.code].error, code: this.code, message: this.message };
    if (this.errors !== undefined) body.errors = this.errors;
    return body;
  }
}
