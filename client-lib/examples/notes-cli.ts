/**
 * A small terminal notes app on client-lib: signs in, keeps the notes in a local SQLite file,
 * syncs whenever the server is reachable, and keeps working when it is not.
 *
 *   node --import tsx client-lib/examples/notes-cli.ts --server http://127.0.0.1:8080 \
 *     --user alice --password 'secret-pass' [--register --email alice@example.com] [--store notes.sqlite]
 *
 * Commands: list, add <text>, edit <n> <text>, append <n> <text>, rm <n>, offline, online,
 * status, help, quit. <n> is the number shown by `list` (or a note id).
 */
import readline from 'node:readline/promises';
import { parseArgs } from 'node:util';
import WebSocket from 'ws';
import { ApiError, PlexichatClient, openFileStore, type Notes } from '../index.ts';

const { values } = parseArgs({
  options: {
    server: { type: 'string', default: 'http://127.0.0.1:8080' },
    user: { type: 'string' },
    password: { type: 'string' },
    email: { type: 'string' },
    register: { type: 'boolean', default: false },
    store: { type: 'string' },
    help: { type: 'boolean', default: false },
  },
});

const HELP = 'commands: list | add <text> | edit <n> <text> | append <n> <text> | rm <n> | offline | online | status | help | quit';

async function main(): Promise<number> {
  if (values.help || !values.user || !values.password) {
    console.log('usage: notes-cli --server URL --user NAME --password PASS [--register --email ADDRESS] [--store FILE]');
    return values.help ? 0 : 2;
  }
  const client = new PlexichatClient({ baseUrl: values.server });
  try {
    if (values.register) {
      await client.register({ username: values.user, email: values.email ?? `${values.user}@example.com`, password: values.password });
    } else {
      await client.login({ login: values.user, password: values.password });
    }
  } catch (error) {
    console.error(error instanceof ApiError ? `${error.status} ${error.error}: ${error.message}` : `cannot reach ${values.server}: ${String(error)}`);
    return 1;
  }
  const storePath = values.store ?? `plexichat-notes-${values.user}.sqlite`;
  const notes = await client.openNotes({ store: await openFileStore(storePath), WebSocket });
  console.log(`signed in as ${values.user}; notes kept in ${storePath}`);
  notes.on('status', (status, pending) => console.log(`[${status}${pending > 0 ? `, ${pending} pending` : ''}]`));
  notes.on('change', ({ local }) => {
    if (!local) console.log('(notes changed on another device: `list` to see them)');
  });
  notes.on('refused', (code, reason) => console.log(`[the server refused the connection: ${code} ${reason}; sign in again]`));
  print(notes);
  console.log(HELP);

  const rl = readline.createInterface({ input: process.stdin, output: process.stdout, terminal: process.stdin.isTTY });
  let shown = notes.list().map((n) => n.id);
  for await (const line of rl) {
    const [command = '', ...rest] = line.trim().split(/\s+/);
    const pick = (ref: string | undefined) => (ref && /^\d{1,4}$/.test(ref) ? shown[Number(ref) - 1] : ref);
    try {
      switch (command) {
        case '':
          break;
        case 'list':
        case 'ls':
          shown = print(notes);
          break;
        case 'add':
          console.log(`added ${notes.add(rest.join(' '))}`);
          break;
        case 'edit':
        case 'append': {
          const id = pick(rest[0]);
          if (!id || !notes.get(id)) throw new Error('no such note: `list` shows their numbers');
          const text = rest.slice(1).join(' ');
          if (command === 'edit') notes.setText(id, text);
          else notes.edit(id, (t) => t.insert(t.length, ` ${text}`));
          break;
        }
        case 'rm': {
          const id = pick(rest[0]);
          if (!id || !notes.remove(id)) throw new Error('no such note');
          break;
        }
        case 'offline':
          notes.disconnect();
          break;
        case 'online':
          notes.connect();
          break;
        case 'status':
          console.log(`${notes.status}, ${notes.pending} pending`);
          break;
        case 'quit':
        case 'exit':
          rl.close();
          break;
        default:
          console.log(HELP);
      }
    } catch (error) {
      console.log(`error: ${error instanceof Error ? error.message : String(error)}`);
    }
  }
  if (notes.pending > 0 && notes.status !== 'offline') {
    // Give the server a moment to store the last edits; whatever is left is sent next time.
    await notes.whenSynced(5_000).catch(() => {});
  }
  if (notes.pending > 0) console.log(`${notes.pending} edits not yet on the server: kept in ${storePath}, sent on the next run`);
  await notes.close();
  return 0;
}

function print(notes: Notes): string[] {
  const list = notes.list();
  if (list.length === 0) console.log('(no notes)');
  for (const [i, note] of list.entries()) console.log(`${String(i + 1).padStart(3)}. ${note.content}`);
  return list.map((n) => n.id);
}

process.exitCode = await main();
