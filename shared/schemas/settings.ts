import { z } from 'zod';

/** Cloud-synced preferences: a flat object of string keys to JSON values, last writer wins per key. */
export type UserSettings = Record<string, JsonValue>;
export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };

export const SETTINGS_MAX_KEYS = 200;
export const SETTINGS_KEY_MAX_LENGTH = 64;
export const SETTINGS_KEY_PATTERN = /^[A-Za-z0-9_.:-]{1,64}$/;
export const SETTINGS_VALUE_MAX_BYTES = 16 * 1024;
export const SETTINGS_TOTAL_MAX_BYTES = 256 * 1024;
/** Arrays and objects inside a value nest at most this deep (deeper JSON is refused, not parsed on). */
export const SETTINGS_MAX_DEPTH = 32;

const jsonValueSchema: z.ZodType<JsonValue> = z.lazy(() =>
  z.union([z.string(), z.number().finite(), z.boolean(), z.null(), z.array(jsonValueSchema), z.record(z.string(), jsonValueSchema)]),
);

/** A PATCH sets the given keys; `null` removes a key. */
export const updateSettingsBodySchema = z
  .record(z.string().regex(SETTINGS_KEY_PATTERN, { message: `Keys are 1-${SETTINGS_KEY_MAX_LENGTH} of A-Z a-z 0-9 _ . : -` }), jsonValueSchema)
  .refine((patch) => Object.keys(patch).length <= SETTINGS_MAX_KEYS, { message: `At most ${SETTINGS_MAX_KEYS} keys` })
  .refine((patch) => Object.values(patch).every((v) => jsonDepth(v) <= SETTINGS_MAX_DEPTH), {
    message: `Values may nest at most ${SETTINGS_MAX_DEPTH} levels deep`,
  })
  .refine((patch) => Object.values(patch).every((v) => jsonByteLength(v) <= SETTINGS_VALUE_MAX_BYTES), {
    message: `Each value must be at most ${SETTINGS_VALUE_MAX_BYTES} bytes of JSON`,
  });
export type UpdateSettingsBody = z.infer<typeof updateSettingsBodySchema>;

const utf8 = new TextEncoder();
export function jsonByteLength(value: unknown): number {
  return utf8.encode(JSON.stringify(value)).byteLength;
}

/** How many arrays and objects nest (0 for a scalar, 1 for `[1]`); stops counting past the limit. */
function jsonDepth(value: unknown, depth = 0): number {
  if (typeof value !== 'object' || value === null || depth > SETTINGS_MAX_DEPTH) return depth;
  let deepest = depth;
  for (const item of Object.values(value)) deepest = Math.max(deepest, jsonDepth(item, depth + 1));
  return deepest;
}
