import http from 'node:http';
import { NeonError } from '../core/errors.js';
import type { Repository } from '../daemon/repository.js';

/** Call the REST API of the repository's daemon with its bearer token; errors become `NeonError`s. */
export async function callDaemon<T = unknown>(repo: Repository, method: string, path: string, body?: unknown): Promise<T> {
  // Both files are read at once; "not running" still wins over an unreadable token.
  const reading = repo.readToken();
  reading.catch(() => undefined);
  const info = await repo.readDaemonInfo();
  if (!info) throw notRunning(repo);
  const token = await reading;
  let response: { status: number; statusText: string; text: string };
  try {
    response = await request(info.port, method, path, token, body === undefined ? undefined : JSON.stringify(body));
  } catch (error) {
    // A daemon.json left by a daemon that was killed points at a closed port.
    if ((error as NodeJS.ErrnoException).code === 'ECONNREFUSED') throw notRunning(repo);
    throw error;
  }
  const { status, statusText, text } = response;
  let parsed: unknown;
  try {
    parsed = text ? JSON.parse(text) : {};
  } catch {
    throw new NeonError('bad_response', `the daemon answered ${status} with something that is not JSON`);
  }
  if (status < 200 || status > 299) {
    const { code = 'http_' + status, message = statusText } = parsed as { code?: string; message?: string };
    throw new NeonError(code, message, { status });
  }
  return parsed as T;
}

/**
 * One HTTP/1.1 request over node:http rather than fetch(): fetch loads undici with TLS, HTTP/2, zlib, web streams
 * and a WebAssembly parser, which cost a short command more than everything else it does (bench/startup.ts).
 */
function request(
  port: number,
  method: string,
  path: string,
  token: string,
  body: string | undefined,
): Promise<{ status: number; statusText: string; text: string }> {
  return new Promise((resolve, reject) => {
    const headers: http.OutgoingHttpHeaders = { authorization: `Bearer ${token}` };
    if (body !== undefined) {
      headers['content-type'] = 'application/json';
      headers['content-length'] = Buffer.byteLength(body);
    }
    // Escaped as fetch() escaped it (a name with a space in a path), which http.request would refuse.
    const url = new URL(path, 'http://127.0.0.1');
    const req = http.request({ host: '127.0.0.1', port, method, path: url.pathname + url.search, headers, agent: false }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (part: Buffer) => parts.push(part));
      res.on('error', reject);
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, statusText: res.statusMessage ?? '', text: Buffer.concat(parts).toString('utf8') }),
      );
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** The error for "no daemon answers for this repository". */
export function notRunning(repo: Repository): NeonError {
  return new NeonError('not_running', `neon is not running for ${repo.dir}: run \`neon start\``, { status: 409 });
}
