import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import ts from 'typescript';

/**
 * The rules that keep features owning their data, checked on the source itself: which module may
 * import which. Type-only imports count: a type that names another feature's service is a
 * dependency on it all the same.
 */
const ROOT = path.resolve(import.meta.dirname, '..');
/** Folders of server/ that are features: each owns its data (repo.ts) and answers through its service. */
const FEATURES = ['auth', 'avatars', 'channels', 'features', 'mfa', 'notes', 'recovery', 'relationships', 'settings', 'users'];
/** What composes or transports: may import across features and from server/http. */
const COMPOSERS = new Set(['server/app.ts', 'server/main.ts']);

interface Module {
  file: string;
  source: string;
  imports: string[];
}

function sourceFiles(dir: string): string[] {
  return fs.readdirSync(path.join(ROOT, dir), { withFileTypes: true }).flatMap((entry) => {
    const rel = `${dir}/${entry.name}`;
    if (entry.isDirectory()) return sourceFiles(rel);
    return entry.name.endsWith('.ts') ? [rel] : [];
  });
}

function loadModules(): Map<string, Module> {
  const modules = new Map<string, Module>();
  for (const file of [...sourceFiles('server'), ...sourceFiles('shared')]) {
    const source = fs.readFileSync(path.join(ROOT, file), 'utf8');
    const imports = ts
      .preProcessFile(source, true, true)
      .importedFiles.map((imported) => imported.fileName)
      .filter((name) => name.startsWith('.'))
      .map((name) => path.posix.normalize(path.posix.join(path.posix.dirname(file), name)));
    modules.set(file, { file, source, imports });
  }
  return modules;
}

/** `server/<folder>` for a file in a folder of server/, else undefined (server/app.ts, shared/...). */
function folderOf(file: string): string | undefined {
  const parts = file.split('/');
  return parts[0] === 'server' && parts.length > 2 ? parts[1] : undefined;
}

/** Every cycle reachable in `graph`, each as the path that closes it. */
function cycles(graph: Map<string, Set<string>>): string[][] {
  const found: string[][] = [];
  const state = new Map<string, 'open' | 'done'>();
  const stack: string[] = [];
  const visit = (node: string) => {
    state.set(node, 'open');
    stack.push(node);
    for (const next of graph.get(node) ?? []) {
      if (state.get(next) === 'open') found.push([...stack.slice(stack.indexOf(next)), next]);
      else if (!state.has(next)) visit(next);
    }
    stack.pop();
    state.set(node, 'done');
  };
  for (const node of graph.keys()) if (!state.has(node)) visit(node);
  return found;
}

const modules = loadModules();

test('the import checker sees the imports (a check that reads nothing cannot fail)', () => {
  assert.ok(modules.size > 50, `${modules.size} modules`);
  assert.ok(modules.get('server/app.ts')?.imports.includes('server/users/service.ts'));
  assert.ok(modules.get('server/users/service.ts')?.imports.includes('server/avatars/service.ts'), 'type-only imports count');
  assert.deepEqual(
    cycles(
      new Map([
        ['a', new Set(['b'])],
        ['b', new Set(['a'])],
      ]),
    ),
    [['a', 'b', 'a']],
  );
});

test('no import cycle between modules', () => {
  const graph = new Map([...modules.values()].map((m) => [m.file, new Set(m.imports.filter((i) => modules.has(i)))]));
  assert.deepEqual(
    cycles(graph).map((cycle) => cycle.join(' -> ')),
    [],
  );
});

test('no cycle between the folders of server/ (a feature that needs another is never needed by it)', () => {
  const graph = new Map<string, Set<string>>();
  for (const m of modules.values()) {
    const from = folderOf(m.file);
    if (from === undefined) continue;
    const edges = graph.get(from) ?? new Set<string>();
    graph.set(from, edges);
    for (const imported of m.imports) {
      const to = folderOf(imported);
      if (to !== undefined && to !== from) edges.add(to);
    }
  }
  assert.deepEqual(
    cycles(graph).map((cycle) => cycle.join(' -> ')),
    [],
  );
});

test("no module reaches into another feature's repo", () => {
  const reaches = [...modules.values()].flatMap((m) =>
    m.imports.filter((i) => i.endsWith('/repo.ts') && folderOf(i) !== folderOf(m.file)).map((i) => `${m.file} -> ${i}`),
  );
  assert.deepEqual(reaches, []);
});

test('in a feature only its routes speak HTTP: services never import server/http', () => {
  const reaches = [...modules.values()].flatMap((m) => {
    const folder = folderOf(m.file);
    if (COMPOSERS.has(m.file) || folder === undefined || !FEATURES.includes(folder) || m.file.endsWith('/routes.ts')) return [];
    return m.imports.filter((i) => i.startsWith('server/http/')).map((i) => `${m.file} -> ${i}`);
  });
  assert.deepEqual(reaches, []);
});

test('SQL only in repo.ts files and server/storage; process.env only in server/config.ts', () => {
  const sql = /\.stmt\(|['"`]\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|DROP|PRAGMA) /;
  const misplaced = [...modules.values()]
    .filter((m) => m.file.startsWith('server/') && !m.file.endsWith('/repo.ts') && !m.file.startsWith('server/storage/'))
    .filter((m) => sql.test(m.source))
    .map((m) => m.file);
  assert.deepEqual(misplaced, []);
  const env = [...modules.values()].filter((m) => m.file !== 'server/config.ts' && /process\.env\b/.test(m.source)).map((m) => m.file);
  assert.deepEqual(env, []);
});
