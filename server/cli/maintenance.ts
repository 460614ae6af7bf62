import path from 'node:path';
import type { Command } from 'commander';
import { RESTORED_CLUSTER_FOLDER, backupDataFolder, restoreDataFolder } from '../admin/backup.ts';
import { examineDataFolder, repairDataFolder } from '../admin/doctor.ts';
import { type ConfigFor, adminLogger, report } from './admin.ts';
import { CliExit, type CliIo, formatBytes, line, progressOn } from './io.ts';

/** `backup`, `restore` and `doctor`: the data folder as a whole. */
export function addMaintenanceCommands(program: Command, io: CliIo, configFor: ConfigFor, withDataDir: (command: Command) => Command): void {
  withDataDir(
    program
      .command('backup')
      .description("back the data folder up into <dir> (new or empty), while the server keeps serving (a cluster's: given the nodes' --redis-url)"),
  )
    .argument('<dir>')
    .action(async (dir: string, _options: object, command: Command) => {
      const target = path.resolve(dir);
      const summary = await backupDataFolder(configFor(command), target, progressOn(io), adminLogger(io));
      const bytes = summary.manifest.files.reduce((sum, file) => sum + file.bytes, 0);
      if (summary.handedOver !== undefined) {
        line(
          io.stderr,
          `backup: each user file was copied while this command held its user; ${summary.handedOver} ${summary.handedOver === 1 ? 'was' : 'were'} being served by a node, which handed ${summary.handedOver === 1 ? 'it' : 'them'} over (their devices reconnected once)`,
        );
      }
      if (summary.reconciled !== undefined) line(io.stderr, `backup: ${summary.reconciled}`);
      if (summary.skipped.length > 0) line(io.stderr, `backup: left out ${summary.skipped.length} user file(s) of accounts deleted while it ran`);
      line(io.stdout, `backed up ${summary.manifest.users} account(s), ${summary.manifest.files.length} files (${formatBytes(bytes)}) to ${target}`);
    });

  withDataDir(
    program
      .command('restore')
      .description('restore a backup from <dir> into the data folder, which must be new or empty (start the server, or the nodes, on it after)'),
  )
    .argument('<dir>')
    .action(async (dir: string, _options: object, command: Command) => {
      const config = configFor(command);
      const summary = await restoreDataFolder(path.resolve(dir), config.dataDir, progressOn(io));
      line(
        io.stdout,
        `restored ${summary.manifest.users} account(s), ${summary.files} files, backed up at ${summary.manifest.finished_at}, into ${config.dataDir}`,
      );
      if (summary.clustered) line(io.stderr, `restore: ${RESTORED_CLUSTER_FOLDER}`);
    });

  withDataDir(program.command('doctor').description('check every file of the data folder and the users index; exit code 1 when something is wrong'))
    .option('--fix', 'repair what can be repaired in place: finish interrupted deletions, derive the users index again from the user files')
    .action(async (options: { fix?: boolean }, command: Command) => {
      const config = configFor(command);
      const logger = adminLogger(io);
      let examined = await examineDataFolder(config, logger, progressOn(io));
      if (options.fix === true && examined.problems.length > 0) {
        printReport(io, examined);
        const repair = await repairDataFolder(config, examined, logger);
        for (const id of repair.finishedDeletions) line(io.stdout, `fixed: finished deleting the account ${id}`);
        if (repair.rebuilt !== undefined) {
          line(io.stdout, `fixed: derived the users index again: ${repair.rebuilt.indexed} accounts, ${repair.rebuilt.removed} rows without a file removed`);
          for (const left of repair.rebuilt.leftOut) line(io.stdout, `left out: ${left}: rename or remove that file`);
        }
        if (repair.notice !== undefined) report(io, repair.notice);
        examined = await examineDataFolder(config, logger, progressOn(io));
      }
      printReport(io, examined);
      // The report says what is wrong; the exit code says that something is.
      if (examined.problems.length > 0) throw new CliExit(1);
    });
}

function printReport(io: CliIo, report: Awaited<ReturnType<typeof examineDataFolder>>): void {
  const sound = report.files.filter((file) => file.problems.length === 0);
  line(io.stdout, `checked ${report.files.length} files (${formatBytes(report.files.reduce((sum, file) => sum + file.bytes, 0))}): ${sound.length} sound`);
  for (const problem of report.problems) line(io.stdout, `problem: ${problem}`);
  for (const fix of report.fixes) line(io.stdout, `fix: ${fix}`);
  if (report.problems.length === 0) line(io.stdout, 'no problem found');
}
