import { createHash } from 'node:crypto';
import type { FeatureFlag, FeaturesFile } from '../../shared/schemas/features.ts';

/** What a flag is evaluated against: the account's id, badges and tier. */
export interface FlagSubject {
  userId: string;
  badges: readonly string[];
  tier: string;
}

/** Every flag of the features file, evaluated for one account. */
export function evaluateFlags(file: FeaturesFile, subject: FlagSubject): Record<string, boolean> {
  const flags: Record<string, boolean> = {};
  for (const [name, flag] of Object.entries(file.flags)) flags[name] = evaluateFlag(name, flag, subject);
  return flags;
}

/** The first rule that applies: badges (a `false` among them wins), tier, rollout, default. */
function evaluateFlag(name: string, flag: FeatureFlag, subject: FlagSubject): boolean {
  let byBadge: boolean | undefined;
  for (const badge of subject.badges) {
    const value = flag.badges[badge];
    if (value === false) return false;
    if (value === true) byBadge = true;
  }
  if (byBadge !== undefined) return byBadge;
  const byTier = flag.tiers[subject.tier];
  if (byTier !== undefined) return byTier;
  if (flag.rollout !== undefined && rolloutBucket(name, subject.userId) < flag.rollout) return true;
  return flag.default;
}

/**
 * The account's place in a flag's rollout, in [0, 100): from a hash of the flag name and the user
 * id, so it is the same on every server and every start, and independent between flags (the first
 * 10% of one flag are not the first 10% of every flag).
 */
export function rolloutBucket(flagName: string, userId: string): number {
  const digest = createHash('sha256').update(`${flagName}\u0000${userId}`).digest();
  return (digest.readUInt32BE(0) / 0x1_0000_0000) * 100;
}
