import type { Command } from 'commander';
import { AccountsAdmin, type ServerNotice } from '../admin/accounts.ts';
import { createLogger } from '../log.ts';
import type { Config } from '../config.ts';
import { isDataFolder } from '../storage/data-folder.ts';
import type { AccountSummary } from '../users/service.ts';
import { CliError, type CliIo, line, readPassword } from './io.ts';

/** How a command gets its configuration: `--data-dir`, then the environment, then the defaults. */
export type ConfigFor = (command: Command) => Config;

/**
 * `plexichat admin …`: accounts of a data folder, also while the server runs on it (the changes go
 * through SQLite and the server is told of them, see server/admin/accounts.ts). `<user>` is an id,
 * a username or an email.
 */
export function addAdminCommands(program: Command, io: CliIo, configFor: ConfigFor, withDataDir: (command: Command) => Command): void {
  const admin = program
    .command('admin')
    .description('administer the accounts of a data folder (also while the server runs on it)')
    .addHelpText('after', '\n<user> is an account id, username or email.');
  const user = admin.command('user').description('create, list, delete, reset, export and import accounts');

  withDataDir(user.command('create').description('create an account (the password is read from a terminal, or from stdin with --password-stdin)'))
    .argument('<username>')
    .argument('<email>')
    .option('--password-stdin', 'read the password from the first line of standard input')
    .action(async (username: string, email: string, options: { passwordStdin?: boolean }, command: Command) => {
      const password = await readPassword(io, options.passwordStdin === true);
      await withAdmin(configFor(command), io, { mayCreate: true }, async (accounts) => {
        const { id, notice } = await accounts.create(username, email, password);
        line(io.stdout, `created ${username} (id ${id})`);
        report(io, notice);
      });
    });

  withDataDir(user.command('list').description('list every account'))
    .option('--json', 'one JSON array, for scripts')
    .action(async (options: { json?: boolean }, command: Command) => {
      await withAdmin(configFor(command), io, { mayCreate: false }, async (accounts) => {
        const list = await accounts.list();
        if (options.json === true) line(io.stdout, JSON.stringify(list, null, 2));
        else printTable(io, list);
      });
    });

  withDataDir(user.command('delete').description('delete an account: its file, its index entry, its sessions (sockets closed), relationships and DM channels'))
    .argument('<user>')
    .option('--yes', 'really delete (required: this cannot be undone)')
    .action(async (reference: string, options: { yes?: boolean }, command: Command) => {
      await withAdmin(configFor(command), io, { mayCreate: false }, async (accounts) => {
        const id = await accounts.resolve(reference);
        if (options.yes !== true) throw new CliError(`this deletes the account ${reference} (id ${id}) and everything of it for good: add --yes`);
        const notice = await accounts.delete(id);
        line(io.stdout, `deleted ${reference} (id ${id})`);
        report(io, notice);
      });
    });

  withDataDir(user.command('reset-password').description('set a new password; every session of the account ends (sync sockets closed with 4401)'))
    .argument('<user>')
    .option('--password-stdin', 'read the password from the first line of standard input')
    .action(async (reference: string, options: { passwordStdin?: boolean }, command: Command) => {
      await withAdmin(configFor(command), io, { mayCreate: false }, async (accounts) => {
        const id = await accounts.resolve(reference);
        const password = await readPassword(io, options.passwordStdin === true);
        const notice = await accounts.resetPassword(id, password);
        line(io.stdout, `reset the password of ${reference} (id ${id}); its sessions are signed out`);
        report(io, notice);
      });
    });

  withDataDir(user.command('export').description("copy an account's file (everything of it, credentials included) for `admin user import` elsewhere"))
    .argument('<user>')
    .argument('<file>', 'where to write it (must not exist)')
    .action(async (reference: string, file: string, _options: object, command: Command) => {
      await withAdmin(configFor(command), io, { mayCreate: false }, async (accounts) => {
        const id = await accounts.resolve(reference);
        await accounts.export(id, file);
        line(io.stdout, `exported ${reference} (id ${id}) to ${file}`);
      });
    });

  withDataDir(user.command('import').description('take in an account exported from another instance (refused if its id, username or email is taken here)'))
    .argument('<file>')
    .action(async (file: string, _options: object, command: Command) => {
      await withAdmin(configFor(command), io, { mayCreate: true }, async (accounts) => {
        const { account, notice } = await accounts.import(file);
        line(io.stdout, `imported ${account.username} (id ${account.id}); it signs in with its password (sessions do not move)`);
        report(io, notice);
      });
    });

  const badge = admin.command('badge').description("add or remove an account's badges (in its user objects and GET /users/@me/features)");
  for (const [name, verb] of [
    ['add', 'give'],
    ['remove', 'take away'],
  ] as const) {
    withDataDir(badge.command(name).description(`${verb} a badge (lower case: letters, digits, "_", "." or "-")`))
      .argument('<user>')
      .argument('<badge>')
      .action(async (reference: string, badgeId: string, _options: object, command: Command) => {
        await withAdmin(configFor(command), io, { mayCreate: false }, async (accounts) => {
          const id = await accounts.resolve(reference);
          const { result: changed, notice } = await accounts.change(id, () =>
            name === 'add' ? accounts.users.addBadge(id, badgeId) : accounts.users.removeBadge(id, badgeId),
          );
          const done = name === 'add' ? (changed ? 'added the badge' : 'already has the badge') : changed ? 'removed the badge' : 'does not have the badge';
          line(io.stdout, `${reference} (id ${id}): ${done} ${badgeId}`);
          report(io, notice);
        });
      });
  }

  const tier = admin.command('tier').description("set an account's tier (GET /users/@me/features; feature flags may depend on it)");
  withDataDir(tier.command('set').description('set the tier (every account starts in "free")'))
    .argument('<user>')
    .argument('<tier>')
    .action(async (reference: string, tierId: string, _options: object, command: Command) => {
      await withAdmin(configFor(command), io, { mayCreate: false }, async (accounts) => {
        const id = await accounts.resolve(reference);
        const { result: before, notice } = await accounts.change(id, () => accounts.users.setTier(id, tierId));
        line(io.stdout, `${reference} (id ${id}): tier ${tierId}${before === tierId ? ' (unchanged)' : ` (was ${before})`}`);
        report(io, notice);
      });
    });

  withDataDir(admin.command('verify-email').description("mark an account's email address verified, without a mail"))
    .argument('<user>')
    .action(async (reference: string, _options: object, command: Command) => {
      await withAdmin(configFor(command), io, { mayCreate: false }, async (accounts) => {
        const id = await accounts.resolve(reference);
        const { result: changed, notice } = await accounts.change(id, () => accounts.users.setEmailVerified(id, true));
        line(io.stdout, `${reference} (id ${id}): email ${changed ? 'marked verified' : 'was verified already'}`);
        report(io, notice);
      });
    });

  withDataDir(admin.command('age-verify').description('mark an account age-verified (age_verified in its user object)'))
    .argument('<user>')
    .option('--revoke', 'mark it not age-verified instead')
    .action(async (reference: string, options: { revoke?: boolean }, command: Command) => {
      await withAdmin(configFor(command), io, { mayCreate: false }, async (accounts) => {
        const id = await accounts.resolve(reference);
        const verified = options.revoke !== true;
        const { result: changed, notice } = await accounts.change(id, () => accounts.users.setAgeVerified(id, verified));
        line(io.stdout, `${reference} (id ${id}): ${verified ? 'age-verified' : 'not age-verified'}${changed ? '' : ' (unchanged)'}`);
        report(io, notice);
      });
    });
}

/**
 * Runs `fn` with the data folder's accounts open, closed after whatever happens. Only `create` and
 * `import` may start a new data folder: for the others, a mistyped --data-dir is an error, not a
 * new empty folder.
 */
async function withAdmin(config: Config, io: CliIo, options: { mayCreate: boolean }, fn: (accounts: AccountsAdmin) => Promise<void>): Promise<void> {
  if (!options.mayCreate && !isDataFolder(config.dataDir)) {
    throw new CliError(`no Plexichat data folder at ${config.dataDir} (no directory.sqlite): check --data-dir`);
  }
  const accounts = await AccountsAdmin.open(config, adminLogger(io));
  try {
    await fn(accounts);
  } finally {
    await accounts.close();
  }
}

/** Warnings and errors of the services, as JSON lines on standard error; standard output keeps the result. */
export function adminLogger(io: CliIo) {
  return createLogger('warn', io.stderr);
}

/** What a running server said: nothing to say when it took the change, or when none runs. */
export function report(io: CliIo, notice: ServerNotice): void {
  if (notice === 'no-answer') {
    line(io.stderr, 'plexichat: warning: the server running on this data folder did not confirm the change; it takes it within a second');
  }
}

function printTable(io: CliIo, accounts: AccountSummary[]): void {
  const rows = [
    ['ID', 'USERNAME', 'EMAIL', 'CREATED', 'VERIFIED', '2FA', 'TIER', 'BADGES'],
    ...accounts.map((account) => [
      account.id,
      account.username,
      account.email,
      new Date(account.created_at * 1000).toISOString().slice(0, 10),
      [account.email_verified ? 'email' : '', account.age_verified ? 'age' : ''].filter((part) => part !== '').join(',') || '-',
      account.totp_enabled ? 'on' : '-',
      account.tier,
      account.badges.join(',') || '-',
    ]),
  ];
  const widths = rows[0]?.map((_, column) => Math.max(...rows.map((row) => (row[column] ?? '').length))) ?? [];
  for (const row of rows)
    line(
      io.stdout,
      row
        .map((cell, column) => cell.padEnd(widths[column] ?? 0))
        .join('  ')
        .trimEnd(),
    );
  line(io.stdout, `${accounts.length} account${accounts.length === 1 ? '' : 's'}`);
}
