export * from './errors.ts';
export * from './snowflake.ts';
export * from './schemas/common.ts';
export * from './schemas/auth.ts';
export * from './schemas/users.ts';
export * from './schemas/messaging-settings.ts';
export * from './schemas/avatars.ts';
