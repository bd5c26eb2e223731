import { NeonError } from '../core/errors.js';
import type { Repository } from '../daemon/repository.js';

/** Call the REST API of the repository's daemon with its bearer token; errors become `NeonError`s. */
export async function callDaemon<T = unknown>(repo: Repository, method: string, path: string, body?: unknown): Promise<T> {
  const info = await repo.readDaemonInfo();
  if (!info) throw notRunning(repo);
  const token = await repo.readToken();
  let response: Response;
  try {
    response = await fetch(`http://127.0.0.1:${info.port}${path}`, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (error) {
    // A daemon.json left by a daemon that was killed points at a closed port.
    if ((error as { cause?: { code?: string } }).cause?.code === 'ECONNREFUSED') throw notRunning(repo);
    throw error;
  }
  const text = await response.text();
  let parsed: unknown;
  try {
    parsed = text ? JSON.parse(text) : {};
  } catch {
    throw new NeonError('bad_response', `the daemon answered ${response.status} with something that is not JSON`);
  }
  if (!response.ok) {
    const { code = 'http_' + response.status, message = response.statusText } = parsed as { code?: string; message?: string };
    throw new NeonError(code, message, { status: response.status });
  }
  return parsed as T;
}

/** The error for "no daemon answers for this repository". */
export function notRunning(repo: Repository): NeonError {
  return new NeonError('not_running', `neon is not running for ${repo.dir}: run \`neon start\``, { status: 409 });
}
