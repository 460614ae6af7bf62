import type { FeaturesFile, UserFeatures } from '../../shared/schemas/features.ts';
import type { UsersService } from '../users/service.ts';
import { evaluateFlags } from './flags.ts';

export interface FeaturesDeps {
  /** The users feature, which keeps each account's badges and tier in its profile. */
  users: Pick<UsersService, 'featuresOf'>;
  /** The flags of `--features-file` (none without one), read and validated at start. */
  flags: FeaturesFile;
}

/**
 * User features: the badges and tier an administrator gave the account (kept by users, in the
 * user's file, so they move with it) and the feature flags of the configuration, evaluated for it.
 * Nothing of its own is stored: flags are evaluated on each call from what the account is now.
 */
export class FeaturesService {
  constructor(private readonly deps: FeaturesDeps) {}

  of(userId: string): UserFeatures {
    const { badges, tier } = this.deps.users.featuresOf(userId);
    return { badges, tier, flags: evaluateFlags(this.deps.flags, { userId, badges, tier }) };
  }
}
