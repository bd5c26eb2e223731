import { NeonError } from '../core/errors.js';
import { writeFileAtomic } from '../core/fs-atomic.js';
import type { Logger } from '../core/log.js';
import type { RestServer } from '../core/rest.js';
import type { NeonConfig } from '../core/config.js';
import { trace } from '../lib/trace.js';
import type { Repository } from './repository.js';

/** The REST port used when none is configured (the seed's `http://localhost:3000`). */
export const DEFAULT_DAEMON_PORT = 3000;

/** Builds the routes on a new server (daemon/routes.ts, loaded while Postgres starts). */
export type RoutesOf = (rest: RestServer) => RestServer | Promise<RestServer>;

/**
 * The REST API on 127.0.0.1, and daemon.json saying where it is (the CLI reads it). Resolves with the server,
 * its port and a notice for the user when the default port was taken and another one was chosen.
 */
export async function serveRest(
  routes: RoutesOf,
  token: string,
  deps: { repo: Repository; log: Logger; config: NeonConfig; startedAt: Date },
): Promise<{ rest: RestServer; port: number; notice?: string }> {
  const { RestServer } = await import('../core/rest.js');
  const rest = await routes(new RestServer(token, deps.log.child('rest')));
  const { port, notice } = await listen(rest, deps.config);
  await writeFileAtomic(
    deps.repo.daemonFile,
    JSON.stringify({ pid: process.pid, port, startedAt: deps.startedAt.toISOString() }) + '\n',
  );
  deps.log.info('REST API on http://127.0.0.1:%d', port);
  trace('daemon', 'REST listening, daemon.json written');
  return { rest, port, notice };
}

// The configured port (neon.config.ts daemon.port, or NEON_PORT) must be free; the default may move.
async function listen(rest: RestServer, config: NeonConfig): Promise<{ port: number; notice?: string }> {
  const configured = process.env.NEON_PORT ? Number(process.env.NEON_PORT) : config.daemon?.port;
  if (configured !== undefined && (!Number.isInteger(configured) || configured < 0 || configured > 65535)) {
    throw new NeonError('bad_port', `daemon port ${configured} is not a port number (0-65535)`);
  }
  try {
    return { port: await rest.listen(configured ?? DEFAULT_DAEMON_PORT) };
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw error;
    if (configured !== undefined) {
      const where = process.env.NEON_PORT ? 'NEON_PORT' : 'daemon.port in neon.config.ts';
      throw new NeonError(
        'port_taken',
        `port ${configured} (set by ${where}) is already in use on 127.0.0.1: free it or choose another port`,
      );
    }
    const port = await rest.listen(0);
    return { port, notice: `port ${DEFAULT_DAEMON_PORT} is in use, so the REST API listens on port ${port}` };
  }
}
