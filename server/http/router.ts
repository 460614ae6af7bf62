import type { Method, Route } from './route.ts';

interface Node {
  statics: Map<string, Node>;
  param: { name: string; node: Node } | undefined;
  routes: Map<Method, Route>;
}

export type Match = { kind: 'found'; route: Route; params: Record<string, string> } | { kind: 'method_not_allowed'; allowed: Method[] } | { kind: 'not_found' };

const newNode = (): Node => ({ statics: new Map(), param: undefined, routes: new Map() });

/**
 * A segment trie. Static segments win over `:params` (so `/users/@me` is never read as a user id),
 * and a path that exists under another method is a 405, not a 404.
 */
export class Router {
  private readonly root = newNode();

  add(route: Route): void {
    let node = this.root;
    for (const segment of splitPath(route.path)) {
      if (segment.startsWith(':')) {
        const name = segment.slice(1);
        if (node.param && node.param.name !== name) {
          throw new Error(`route ${route.path}: parameter :${name} conflicts with :${node.param.name}`);
        }
        node.param ??= { name, node: newNode() };
        node = node.param.node;
      } else {
        let next = node.statics.get(segment);
        if (!next) {
          next = newNode();
          node.statics.set(segment, next);
        }
        node = next;
      }
    }
    if (node.routes.has(route.method)) throw new Error(`duplicate route ${route.method} ${route.path}`);
    node.routes.set(route.method, route);
  }

  match(method: string, path: string): Match {
    const params: Record<string, string> = {};
    const node = this.find(this.root, splitPath(path), 0, params);
    if (!node || node.routes.size === 0) return { kind: 'not_found' };
    const route = node.routes.get(method as Method);
    if (route) return { kind: 'found', route, params };
    return { kind: 'method_not_allowed', allowed: [...node.routes.keys()] };
  }

  private find(node: Node, segments: string[], index: number, params: Record<string, string>): Node | undefined {
    if (index === segments.length) return node;
    const segment = segments[index] as string;
    const byStatic = node.statics.get(segment);
    if (byStatic) {
      const found = this.find(byStatic, segments, index + 1, params);
      if (found && found.routes.size > 0) return found;
    }
    if (node.param && segment !== '') {
      const found = this.find(node.param.node, segments, index + 1, params);
      if (found && found.routes.size > 0) {
        params[node.param.name] = decodeSegment(segment);
        return found;
      }
    }
    return undefined;
  }
}

function splitPath(path: string): string[] {
  const trimmed = path.length > 1 && path.endsWith('/') ? path.slice(0, -1) : path;
  return trimmed.split('/').slice(1);
}

function decodeSegment(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    return segment;
  }
}
