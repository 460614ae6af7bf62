import { z } from 'zod';

/**
 * User features: badges and a tier, which an administrator gives an account (`plexichat admin
 * badge add`, `admin tier set`), and feature flags, which the server's features file defines and
 * the server evaluates for each account.
 */

/** A badge or tier id: lower case, as clients match them (`early_supporter`, `pro`). */
export const FEATURE_ID_PATTERN = /^[a-z0-9][a-z0-9_.-]{0,31}$/;
const FEATURE_ID_MESSAGE = 'Must be 1-32 characters: lower-case letters, digits, "_", "." or "-", starting with a letter or digit';

export const badgeSchema = z.string().regex(FEATURE_ID_PATTERN, { message: FEATURE_ID_MESSAGE });
export const tierSchema = z.string().regex(FEATURE_ID_PATTERN, { message: FEATURE_ID_MESSAGE });

/** The tier of every account until an administrator sets another. */
export const DEFAULT_TIER = 'free';
/** Most badges one account may hold. */
export const MAX_BADGES = 32;

/** `GET /users/@me/features`. */
export interface UserFeatures {
  badges: string[];
  tier: string;
  /** Every flag the server defines, evaluated for the caller. */
  flags: Record<string, boolean>;
}

/** A flag name: the key clients look up. */
export const FLAG_NAME_PATTERN = /^[a-z0-9][a-z0-9_.-]{0,63}$/;
const MAX_FLAGS = 256;

/**
 * One flag of the features file. Its value for an account is decided by the first rule that
 * applies: a badge the account holds (`false` wins over `true` when two of its badges disagree),
 * then its tier, then the rollout, then `default`.
 */
const flagSchema = z.strictObject({
  default: z.boolean().default(false),
  /** Badge id → value, for accounts holding that badge. */
  badges: z.record(badgeSchema, z.boolean()).default({}),
  /** Tier id → value, for accounts in that tier. */
  tiers: z.record(tierSchema, z.boolean()).default({}),
  /**
   * Percent of accounts (0-100) for which the flag is true when no badge or tier decided: each
   * account falls in a fixed bucket per flag (a hash of the flag and the user id), so raising the
   * percentage only adds accounts, and every server agrees.
   */
  rollout: z.number().min(0).max(100).optional(),
});

/** `--features-file`: JSON, `{"flags": {"<name>": {…flag…}}}`; unknown keys are refused (a typo would be silent otherwise). */
export const featuresFileSchema = z.strictObject({
  flags: z
    .record(z.string().regex(FLAG_NAME_PATTERN, { message: 'Flag names are 1-64 characters: lower-case letters, digits, "_", "." or "-"' }), flagSchema)
    .refine((flags) => Object.keys(flags).length <= MAX_FLAGS, { message: `At most ${MAX_FLAGS} flags` })
    .default({}),
});
export type FeaturesFile = z.infer<typeof featuresFileSchema>;
export type FeatureFlag = FeaturesFile['flags'][string];
