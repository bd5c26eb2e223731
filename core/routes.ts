import { userInfo } from 'node:os';
import { NeonError } from './errors.js';
import type { Daemon } from './daemon.js';
import { RestResponse, type RestServer } from './rest.js';

/** The seed's `/pgs` actions that exist so far. */
const PG_ACTIONS = ['start', 'stop'] as const;

/** The REST API: `/status`, the `/pgs` resource, and `/shutdown` for `neon stop`. */
export function registerRoutes(rest: RestServer, daemon: Daemon): RestServer {
  return rest
    .route('GET', '/status', async () => statusOf(daemon))
    .route('GET', '/pgs', async () => daemon.pgs())
    .route('GET', '/pgs/:name', async ({ params }) => daemon.compute(params.name).info())
    .route('POST', '/pgs/:name/actions', async ({ params, body }) => {
      const compute = daemon.compute(params.name);
      const action = body.action;
      if (typeof action !== 'string' || !(PG_ACTIONS as readonly string[]).includes(action)) {
        throw new NeonError('bad_action', `"action" must be one of ${PG_ACTIONS.join(', ')} (got ${JSON.stringify(action ?? null)})`, {
          status: 400,
        });
      }
      const extra = Object.keys(body).filter((key) => key !== 'action');
      if (extra.length) throw new NeonError('bad_request', `unknown field(s) ${extra.join(', ')} for action ${action}`, { status: 400 });
      if (action === 'start') await compute.start();
      else await compute.stop();
      await daemon.saveCompute({ name: compute.record.name, running: action === 'start' });
      return compute.info();
    })
    .route('POST', '/shutdown', async () => {
      // Answer first: the shutdown closes this server.
      setImmediate(() => void daemon.shutdown('request'));
      return new RestResponse(202, { stopping: true, pid: process.pid });
    });
}

/** What `GET /status` answers. */
export type Status = ReturnType<typeof statusOf>;

/** The daemon, its Postgres binaries and its components, for `GET /status` and `neon status`. */
export function statusOf(daemon: Daemon) {
  const { repo, meta, binaries } = daemon;
  return {
    repository: repo.dir,
    project_dir: meta.projectDir,
    config_file: daemon.configFile ?? null,
    storage_dest: meta.storageDest ?? null,
    plugins: daemon.plugins.map((p) => p.name),
    daemon: {
      pid: process.pid,
      port: daemon.port,
      url: `http://127.0.0.1:${daemon.port}`,
      started_at: daemon.startedAt.toISOString(),
      uptime_s: Math.round((Date.now() - daemon.startedAt.getTime()) / 1000),
      log_file: repo.logFile('daemon'),
    },
    postgres: {
      version: binaries.fullVersion,
      source: binaries.source,
      bin_dir: binaries.binDir,
      run_as: daemon.pgUser?.name ?? userInfo().username,
    },
    components: [...daemon.computes.values()].map((c) => {
      const info = c.info();
      return { kind: 'compute', name: info.name, state: info.state, pid: info.pid, port: info.port, restarts: info.restarts };
    }),
  };
}
