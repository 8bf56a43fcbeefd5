import type { Request } from 'express';

/** The parts of Express's internal layers the route template needs; both majors, read only. */
interface Layer {
  readonly route?: { readonly path?: unknown; readonly stack?: readonly Layer[] };
  /** A route's own layers: the method they handle, lower case (undefined for `all`). */
  readonly method?: string;
  readonly handle?: unknown;
  /** Express 4: the compiled path and its parameter names. */
  readonly regexp?: RegExp & { fast_slash?: boolean; fast_star?: boolean };
  readonly keys?: ReadonlyArray<{ readonly name: string | number }>;
  /** Express 5 (router 2.3+): the path as registered, and a matcher that stores nothing on the layer. */
  readonly rawPath?: unknown;
  readonly match?: (path: string) => { readonly path: string; readonly pattern: unknown } | false;
}

interface Router {
  readonly stack: readonly Layer[];
}

/** A layer's share of the template, and how much of the concrete path it took. */
interface Match {
  readonly template: string;
  readonly length: number;
}

function asRouter(handle: unknown): Router | undefined {
  return typeof handle === 'function' && Array.isArray((handle as { stack?: unknown }).stack)
    ? (handle as unknown as Router)
    : undefined;
}

function withoutTrailingSlash(path: string): string {
  return path.endsWith('/') ? path.slice(0, -1) : path;
}

const withIndices = new WeakMap<RegExp, RegExp>();

/**
 * Express 4 keeps only the compiled regexp of a path, so the template is rebuilt from a match on the
 * concrete path: each captured parameter is put back as `:name` (unnamed groups as `*`).
 */
function matchExpress4(regexp: NonNullable<Layer['regexp']>, keys: Layer['keys'], path: string): Match | undefined {
  if (regexp.fast_slash) return { template: '', length: 0 };
  if (regexp.fast_star) return { template: '/*', length: path.length };
  let re = withIndices.get(regexp);
  if (re === undefined) {
    re = new RegExp(regexp.source, `${regexp.flags.replace(/[gyd]/g, '')}d`);
    withIndices.set(regexp, re);
  }
  const m = re.exec(path);
  if (m === null || m.index !== 0 || m.indices === undefined) return undefined;
  const text = m[0];
  let template = '';
  let pos = 0;
  for (let i = 1; i < m.indices.length; i++) {
    const span = m.indices[i];
    if (span === undefined || span[0] < pos) continue;
    const name = keys?.[i - 1]?.name;
    template += text.slice(pos, span[0]) + (typeof name === 'string' ? `:${name}` : '*');
    pos = span[1];
  }
  return { template: template + text.slice(pos), length: text.length };
}

/** Matches a layer on `path` without touching it (Express 4's own `match` stores the result on the shared layer). */
function matchLayer(layer: Layer, path: string): Match | undefined {
  let m: Match | undefined;
  if (typeof layer.match === 'function' && 'rawPath' in layer) {
    const found = layer.match(path);
    if (found)
      m = {
        template: typeof found.pattern === 'string' ? found.pattern : String(found.pattern),
        length: found.path.length,
      };
  } else if (layer.regexp instanceof RegExp) {
    m = matchExpress4(layer.regexp, layer.keys, path);
  }
  // As the router checks it: a prefix must end where a path segment ends.
  return m === undefined || (m.length < path.length && path[m.length] !== '/') ? undefined : m;
}

/** What Express keeps on an application, and on one mounted with `app.use(path, subApp)`. */
interface App {
  readonly parent?: unknown;
  readonly _router?: unknown;
  readonly router?: unknown;
}

function routerOf(app: App): Router | undefined {
  // Express 4 keeps the app router in `_router`; Express 5 in `router` (which throws on Express 4).
  return asRouter(app._router) ?? asRouter(app.router);
}

/**
 * The template of the mount paths that lead from `router` to `route` on `path`, found the way the
 * router found them: mounts in stack order, backtracking out of a router that matched the prefix
 * but does not hold the route. `req.baseUrl` is no help: a router restores it when an error leaves it.
 * `owner` is the application the router belongs to; `mounted` the sub-applications the request is in,
 * which Express mounts behind a wrapper of its own (`mounted_app`) that only their `parent` leads to.
 */
function mountTemplate(
  router: Router,
  path: string,
  route: object,
  owner: App,
  mounted: readonly App[],
): string | undefined {
  for (const layer of router.stack) {
    if (layer.route !== undefined) {
      if (layer.route === route && matchLayer(layer, path) !== undefined) return '';
      continue;
    }
    let inner = asRouter(layer.handle);
    let innerOwner = owner;
    if (inner === undefined) {
      if (mounted.length === 0 || (layer.handle as { name?: unknown } | undefined)?.name !== 'mounted_app') continue;
      const app = mounted.find((a) => a.parent === owner);
      inner = app === undefined ? undefined : routerOf(app);
      if (app === undefined || inner === undefined) continue;
      innerOwner = app;
    }
    const mount = matchLayer(layer, path);
    if (mount === undefined) continue;
    const rest = path.slice(mount.length);
    const below = mountTemplate(inner, rest.startsWith('/') ? rest : `/${rest}`, route, innerOwner, mounted);
    if (below !== undefined) return withoutTrailingSlash(mount.template) + below;
  }
  return undefined;
}

/**
 * The route template of a request (`/api/users/:id`), from the route Express matched and the mount
 * paths of the routers and sub-applications above it (Express 4, or Express 5 with router 2.3+);
 * undefined when no route matched or the path cannot be rebuilt. Never throws: it runs when the
 * response finishes.
 */
export function routeTemplate(req: Request): string | undefined {
  try {
    const route = req.route as { path?: unknown } | undefined;
    if (route === undefined || route === null || route.path === undefined) return undefined;
    // Inside a sub-application `req.app` is that application; its `parent` chain leads to the one the server runs.
    let top = req.app as unknown as App;
    const mounted: App[] = [];
    while (typeof top.parent === 'function') {
      mounted.push(top);
      top = top.parent as App;
    }
    const root = routerOf(top);
    const path = typeof route.path === 'string' ? route.path : String(route.path);
    // A route on the application's own router is reached one way only: its path is the template, no matching needed.
    if (root?.stack.some((layer) => layer.route === route)) return path;
    const url = req.originalUrl;
    const q = url.indexOf('?');
    const prefix =
      root === undefined ? undefined : mountTemplate(root, q < 0 ? url : url.slice(0, q), route, top, mounted);
    if (prefix === undefined) return undefined;
    return path === '/' && prefix.length > 0 ? prefix : prefix + path;
  } catch {
    return undefined;
  }
}

/** Whether a route handles `method`, as the router asks it (Express 4 `_handles_method`, router 2 `_handlesMethod`). */
function handlesMethod(route: object, method: string): boolean {
  const r = route as { _handles_method?: (m: string) => boolean; _handlesMethod?: (m: string) => boolean };
  const ask = r._handlesMethod ?? r._handles_method;
  return typeof ask === 'function' && ask.call(route, method) === true;
}

/**
 * The route policy of the last middleware carrying one (`policyOf` finds it) that the router would run
 * for `path` and `method`, walking mounts and routes the way the router matches them. Layers that end
 * the request early cannot be foreseen: they only make the policy apply to a request that never reached it.
 */
function policyIn<P>(
  router: Router,
  path: string,
  method: string,
  policyOf: (handle: unknown) => P | undefined,
): P | undefined {
  let found: P | undefined;
  for (const layer of router.stack) {
    const route = layer.route;
    if (route !== undefined) {
      const stack = route.stack;
      if (!Array.isArray(stack) || !stack.some((l) => policyOf(l.handle) !== undefined)) continue;
      if (!handlesMethod(route, method) || matchLayer(layer, path) === undefined) continue;
      const lower = method.toLowerCase();
      for (const l of stack) {
        const policy = policyOf(l.handle);
        if (
          policy !== undefined &&
          (l.method === undefined || l.method === lower || (lower === 'head' && l.method === 'get'))
        )
          found = policy;
      }
      continue;
    }
    const own = policyOf(layer.handle);
    const inner = own === undefined ? asRouter(layer.handle) : undefined;
    if (own === undefined && inner === undefined) continue;
    const mount = matchLayer(layer, path);
    if (mount === undefined) continue;
    if (own !== undefined) {
      found = own;
      continue;
    }
    const rest = path.slice(mount.length);
    const below = policyIn(inner!, rest.startsWith('/') ? rest : `/${rest}`, method, policyOf);
    if (below !== undefined) found = below;
  }
  return found;
}

/**
 * The route policy a request will meet on the application's router and the routers mounted on it,
 * found before routing (so the SERVER span starts with it); undefined when none applies or the
 * stack cannot be read. Sub-applications are not looked into: Express keeps no way to reach them
 * from their parent. Never throws.
 */
export function routePolicyFor<P>(req: Request, policyOf: (handle: unknown) => P | undefined): P | undefined {
  try {
    let top = req.app as unknown as App;
    while (typeof top.parent === 'function') top = top.parent as App;
    const root = routerOf(top);
    if (root === undefined) return undefined;
    const url = req.originalUrl ?? req.url ?? '/';
    const q = url.indexOf('?');
    return policyIn(root, q < 0 ? url : url.slice(0, q), req.method, policyOf);
  } catch {
    return undefined;
  }
}
