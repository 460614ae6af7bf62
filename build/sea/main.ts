/**
 * The single executable's main script. The server's modules load the native addons as they are
 * imported, so the addons are unpacked (and checked) first and the server imported only after.
 */
import { unpackAddons } from './unpack.ts';

try {
  unpackAddons();
} catch (error) {
  process.stderr.write(`plexichat: cannot unpack the native addons: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
}
import('../../server/main.ts').catch((error: unknown) => {
  process.stderr.write(`plexichat: cannot start: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
});
