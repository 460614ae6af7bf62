import type { z } from 'zod';
import { type FieldError, isErrorCode } from '../../shared/errors.ts';
import { AppError } from '../core/app-error.ts';
import type { InputSource, Route } from './route.ts';

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** `application/json`, any case, with or without parameters such as `; charset=utf-8`. */
export function isJsonMediaType(contentType: string | undefined): boolean {
  if (contentType === undefined) return false;
  const semicolon = contentType.indexOf(';');
  return (semicolon === -1 ? contentType : contentType.slice(0, semicolon)).trim().toLowerCase() === 'application/json';
}

export function parseJson(raw: Buffer): unknown {
  if (raw.byteLength === 0) return {};
  let text: string;
  try {
    text = utf8.decode(raw);
  } catch {
    throw new AppError('invalid_json', 'Request body is not valid UTF-8');
  }
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new AppError('invalid_json', error instanceof Error ? error.message : 'Request body is not valid JSON');
  }
}

/** First value per key; repeated keys do not turn into arrays a schema would not expect. */
export function parseQuery(raw: string): Record<string, string> {
  const out: Record<string, string> = {};
  if (raw === '') return out;
  for (const [key, value] of new URLSearchParams(raw)) if (!Object.hasOwn(out, key)) out[key] = value;
  return out;
}

/**
 * Parses `value` with `schema`, or throws the answer for its failure: the route's `invalid` hook
 * decides first; then an issue that carries its own error code (`params.code`, see `snowflakeParam`
 * in shared/schemas/common.ts) answers with that code and its message; anything else is 400
 * `invalid_input` with one field error per issue.
 */
export function validate(route: Route, schema: z.ZodType, value: unknown, source: InputSource): unknown {
  let result: ReturnType<z.ZodType['safeParse']>;
  try {
    result = schema.safeParse(value);
  } catch {
    // Recursive schemas can exhaust the stack on absurdly nested input: that is bad input, not a bug.
    throw new AppError('invalid_input', 'Validation failed: the input is nested too deeply');
  }
  if (result.success) return result.data;
  const { issues } = result.error;
  throw (
    route.invalid?.(issues, source) ??
    codedError(issues) ??
    new AppError('invalid_input', 'Validation failed', { errors: issues.flatMap((issue) => fieldErrors(issue, source)) })
  );
}

/** The first issue that names the error it stands for (a custom check with `params: { code }`). */
function codedError(issues: z.core.$ZodIssue[]): AppError | undefined {
  for (const issue of issues) {
    const code: unknown = issue.code === 'custom' ? issue.params?.code : undefined;
    if (isErrorCode(code)) return new AppError(code, issue.message);
  }
  return undefined;
}

function fieldErrors(issue: z.core.$ZodIssue, source: InputSource): FieldError[] {
  const base = issue.path.map(String).join('.');
  // An unknown key is reported at the key itself, so clients can point at the offending field.
  if (issue.code === 'unrecognized_keys') {
    return issue.keys.map((key) => ({ path: base ? `${base}.${key}` : key, message: 'Unknown field' }));
  }
  return [{ path: base || source, message: issue.message }];
}
