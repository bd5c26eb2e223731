import { timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import { NeonError, isExpected, messageOf } from './errors.js';
import type { Logger } from './log.js';

/** A parsed request: route parameters and the JSON body (an empty object when there is none). */
export interface RestRequest {
  params: Record<string, string>;
  body: Record<string, unknown>;
  query: URLSearchParams;
}

/** A route handler answers with a JSON value or a Buffer (bytes) with status 200, or a {@link RestResponse}. */
export type RestHandler = (request: RestRequest) => Promise<unknown>;

/** Answer with another status than 200. */
export class RestResponse {
  constructor(
    readonly status: number,
    readonly body: unknown,
  ) {}
}

interface Route {
  method: string;
  pattern: RegExp;
  keys: string[];
  handler: RestHandler;
}

const MAX_BODY = 1 << 20;

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

  /** Add a route; `:name` segments become `params.name`. */
  route(method: string, path: string, handler: RestHandler): this {
    const keys: string[] = [];
    const source = path.replace(/:(\w+)/g, (_, key: string) => (keys.push(key), '([^/]+)'));
    this.routes.push({ method, pattern: new RegExp(`^${source}/?$`), keys, handler });
    return this;
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
      const values = route.pattern.exec(url.pathname)!.slice(1).map(decodeURIComponent);
      const params = Object.fromEntries(route.keys.map((key, i) => [key, values[i]]));
      const body = await readBody(req);
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

async function readBody(req: http.IncomingMessage): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY) throw new NeonError('body_too_large', `request body is larger than ${MAX_BODY} bytes`, { status: 413 });
    chunks.push(chunk as Buffer);
  }
  const text = Buffer.concat(chunks).toString('utf8').trim();
  if (!text) return {};
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

type SnakeKey<S extends string> = S extends `${infer H}${infer T}`
  ? `${H extends Lowercase<H> ? H : `_${Lowercase<H>}`}${SnakeKey<T>}`
  : S;

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
