import { timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import { NeonError, isExpected, messageOf } from './errors.js';
import type { Logger } from './log.js';
import { Name, Type, Validator, type Static, type TSchema } from './schema.js';

/**
 * A parsed request: route parameters and the JSON body (an empty object when there is none), both checked
 * against the route's schemas. `params` has no prototype: `params.constructor` is what the client sent, or nothing.
 */
export interface RestRequest<B = Record<string, unknown>, P = Record<string, string>> {
  params: P;
  body: B;
  query: URLSearchParams;
}

/** A route handler answers with a JSON value or a Buffer (bytes) with status 200, or a {@link RestResponse}. */
export type RestHandler<B = Record<string, unknown>, P = Record<string, string>> = (request: RestRequest<B, P>) => Promise<unknown>;

/**
 * The input a route accepts, as JSON Schema. Without `params`, every path parameter must be a name
 * ({@link Name}); without `body`, any JSON object is passed on (the handler checks it).
 */
export interface RouteSchema<B extends TSchema = TSchema, P extends TSchema = TSchema> {
  params?: P;
  body?: B;
}

/** Answer with another status than 200. */
export class RestResponse {
  constructor(
    readonly status: number,
    readonly body: unknown,
  ) {}
}

/** What a handler receives for a schema (or `Otherwise` when the route has none). */
type Checked<S extends TSchema, Otherwise> = [S] extends [never] ? Otherwise : Static<S>;

interface Route {
  method: string;
  pattern: RegExp;
  keys: string[];
  handler: RestHandler<any, any>;
  params: Validator<TSchema>;
  body?: Validator<TSchema>;
  schema: RouteSchema;
}

/** Request bodies are small JSON objects: a megabyte is far more than any route needs. */
const MAX_BODY = 1 << 20;
/** Nesting depth of a request body: a route needs 3; a deeper value is refused before it is parsed. */
const MAX_DEPTH = 32;

/**
 * The REST API's HTTP layer: bearer-token check, JSON in and out, errors as `{ code, message }` with a stable
 * code. A dozen routes do not need a framework; node:http keeps the daemon quick to start.
 */
export class RestServer {
  private readonly routes: Route[] = [];
  readonly server: http.Server;

  constructor(
    private readonly token: string,
    private readonly log: Logger,
  ) {
    this.server = http.createServer((req, res) => void this.handle(req, res));
  }

  /**
   * Add a route; `:name` segments become `params.name`. Its input is checked against `schema` before the handler
   * runs (a 400 naming the first thing wrong), so the handler gets values of the schema's types.
   */
  route<B extends TSchema = never, P extends TSchema = never>(
    method: string,
    path: string,
    handler: RestHandler<Checked<B, Record<string, unknown>>, Checked<P, Record<string, string>>>,
    schema: RouteSchema<B, P> = {},
  ): this {
    const keys: string[] = [];
    const source = path.replace(/:(\w+)/g, (_, key: string) => (keys.push(key), '([^/]+)'));
    const params = schema.params ?? Type.Object(Object.fromEntries(keys.map((key) => [key, Name(key)])));
    this.routes.push({
      method,
      pattern: new RegExp(`^${source}/?$`),
      keys,
      handler,
      params: new Validator(params, `path of ${method} ${path}`, 'bad_path'),
      body: schema.body && new Validator(schema.body, `request body of ${method} ${path}`),
      schema: { ...schema, params },
    });
    return this;
  }

  /** The routes and their input schemas (JSON Schema), for a reference such as OpenAPI. */
  describe(): { method: string; path: string; schema: RouteSchema }[] {
    return this.routes.map((r) => ({ method: r.method, path: r.pattern.source, schema: r.schema }));
  }

  /** Listen on 127.0.0.1 only; resolves with the port. */
  listen(port: number): Promise<number> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen({ port, host: '127.0.0.1', exclusive: true }, () => {
        this.server.off('error', reject);
        resolve((this.server.address() as { port: number }).port);
      });
    });
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }

  private authorised(req: http.IncomingMessage): boolean {
    const header = req.headers.authorization ?? '';
    const given = Buffer.from(header.startsWith('Bearer ') ? header.slice(7).trim() : '');
    const wanted = Buffer.from(this.token);
    return given.length === wanted.length && timingSafeEqual(given, wanted);
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    try {
      if (!this.authorised(req)) {
        throw new NeonError('unauthorized', 'missing or wrong bearer token: the CLI reads it from the repository (token file)', {
          status: 401,
        });
      }
      const url = new URL(req.url ?? '/', 'http://127.0.0.1');
      const matches = this.routes.filter((r) => r.pattern.test(url.pathname));
      if (matches.length === 0) throw new NeonError('not_found', `no such resource: ${url.pathname}`, { status: 404 });
      const route = matches.find((r) => r.method === req.method);
      if (!route) {
        res.setHeader('allow', matches.map((r) => r.method).join(', '));
        throw new NeonError('method_not_allowed', `${req.method} is not allowed on ${url.pathname}`, { status: 405 });
      }
      const values = route.pattern.exec(url.pathname)!.slice(1).map(decodePart);
      const params: Record<string, string> = Object.create(null);
      route.keys.forEach((key, i) => (params[key] = values[i]));
      route.params.check(params);
      const body = await readBody(req);
      route.body?.check(body);
      const result = await route.handler({ params, body, query: url.searchParams });
      if (result instanceof RestResponse) send(res, result.status, result.body);
      else send(res, 200, result ?? {});
    } catch (error) {
      const known = isExpected(error) && error instanceof NeonError;
      if (!known) this.log.error('%s %s failed: %s', req.method, req.url, (error as Error).stack ?? messageOf(error));
      const status = known ? error.status : 500;
      send(res, status, { code: known ? error.code : 'internal', message: messageOf(error) });
    }
  }
}

function decodePart(part: string): string {
  try {
    return decodeURIComponent(part);
  } catch {
    throw new NeonError('bad_path', `malformed percent-encoding in the path segment "${part.slice(0, 80)}"`, { status: 400 });
  }
}

/** The body as text. A body over the limit is read to its end (not stored) so that the client gets the 413. */
function readText(req: http.IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size <= MAX_BODY) chunks.push(chunk);
    });
    req.on('error', reject);
    req.on('end', () => {
      if (size > MAX_BODY) reject(new NeonError('body_too_large', `request body is larger than ${MAX_BODY} bytes`, { status: 413 }));
      else resolve(Buffer.concat(chunks).toString('utf8'));
    });
  });
}

/** How deeply arrays and objects nest in a JSON text (without parsing it). */
function nesting(text: string): number {
  let depth = 0;
  let deepest = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c)
        i++; // backslash: skip the escaped character
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x7b || c === 0x5b) deepest = Math.max(deepest, ++depth);
    else if (c === 0x7d || c === 0x5d) depth--;
  }
  return deepest;
}

async function readBody(req: http.IncomingMessage): Promise<Record<string, unknown>> {
  const text = (await readText(req)).trim();
  if (!text) return {};
  if (nesting(text) > MAX_DEPTH) {
    throw new NeonError('bad_json', `request body nests deeper than ${MAX_DEPTH} levels`, { status: 400 });
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new NeonError('bad_json', `request body is not valid JSON: ${messageOf(error)}`, { status: 400 });
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new NeonError('bad_json', 'request body must be a JSON object', { status: 400 });
  }
  return value as Record<string, unknown>;
}

/**
 * The wire form of a response: every object key in snake_case, the seed's casing (`storage_name`,
 * `connection_string`), whatever the TypeScript field was called (`forkLsn` → `fork_lsn`). One casing for every
 * route, converted here rather than remembered in each one.
 */
export function toWire(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(toWire);
  if (value === null || typeof value !== 'object' || value instanceof Date) return value;
  const out: Record<string, unknown> = {};
  for (const [key, inner] of Object.entries(value)) out[snakeCase(key)] = toWire(inner);
  return out;
}

type SnakeKey<S extends string> = S extends `${infer H}${infer T}` ? `${H extends Lowercase<H> ? H : `_${Lowercase<H>}`}${SnakeKey<T>}` : S;

/** The type of {@link toWire}'s result: what a REST client receives for a `T`. */
export type Wire<T> = T extends (infer U)[]
  ? Wire<U>[]
  : T extends Date | Buffer
    ? T
    : T extends object
      ? { [K in keyof T as K extends string ? SnakeKey<K> : K]: Wire<T[K]> }
      : T;

const snakeCase = (key: string) => key.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toLowerCase();

function send(res: http.ServerResponse, status: number, body: unknown): void {
  if (Buffer.isBuffer(body)) {
    res.writeHead(status, { 'content-type': 'application/octet-stream', 'content-length': body.length });
    res.end(body);
    return;
  }
  const text = JSON.stringify(toWire(body), null, 2) + '\n';
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}
