import { userInfo } from 'node:os';
import { checkout } from './checkout.js';
import { createBranch, deleteBranch } from './branches.js';
import { createCompute, destroyCompute, promoteCompute, withCompute } from './computes.js';
import { NeonError } from '../core/errors.js';
import { createSnapshot, historyLog, resolveTarget } from './snapshots.js';
import { verifyRepository } from './upkeep.js';
import { collectGarbage } from './gc.js';
import { formatLsn } from '../core/wal.js';
import type { Daemon } from './daemon.js';
import { RestResponse, type RestServer } from '../core/rest.js';
import * as schemas from './schemas.js';
import { registerStorageRoutes } from './storage-routes.js';
import { startAsStorageReplica } from './storage-replica.js';
import { registerFormatRoutes } from './format-routes.js';
import { Operations, type OperationHandle } from './operations.js';

/** The REST API: `/status`, the `/pgs` resource, and `/shutdown` for `neon stop`. */
export function registerRoutes(rest: RestServer, daemon: Daemon): RestServer {
  // One table of operations: `GET /operations/:id` follows pushes, pulls, exports and imports alike.
  const operations = new Operations(daemon.log.child('operations'));
  return registerFormatRoutes(registerStorageRoutes(rest, daemon, operations), daemon, operations)
    .route('GET', '/status', async () => statusOf(daemon))
    .route('GET', '/pgs', async () => daemon.pgs())
    .route('GET', '/pgs/:name', async ({ params }) => daemon.compute(params.name).info())
    .route(
      'POST',
      '/pgs/:name/actions',
      async ({ params, body }) => {
        const { action } = body;
        if (action === 'promote') return daemon.serially(() => withCompute(daemon, params.name, () => promoteCompute(daemon, params.name)));
        return withCompute(daemon, params.name, async () => {
          // Looked up in the queue: a compute destroyed by the request before this one is a 404.
          const compute = daemon.compute(params.name);
          if (action === 'start') {
            const { record } = compute;
            if (record.retired) {
              throw new NeonError(
                'retired',
                `compute ${record.name} was replaced on branch ${record.branch} by ${record.retired}: destroy it`,
                { status: 409 },
              );
            }
            if (schemas.isReplica(body.is_replica) && !record.replica) {
              // A compute over another repository's storage becomes a standby following that repository.
              const standby = await startAsStorageReplica(daemon, record.name);
              if (standby) return standby;
              throw new NeonError(
                'not_a_replica',
                `compute ${record.name} is not a replica: create one with neon pg create -n NAME --branch ${record.branch} --replica`,
              );
            }
            await compute.start();
          } else await compute.stop();
          await daemon.saveCompute({ name: compute.record.name, running: action === 'start' });
          return compute.info();
        });
      },
      { body: schemas.PgAction },
    )
    .route('GET', '/safekeepers', async () => daemon.safekeepers.info())
    .route('GET', '/safekeepers/:name', async ({ params }) => daemon.safekeepers.get(params.name).info())
    .route(
      'POST',
      '/safekeepers/:name/actions',
      async ({ params, body }) => {
        const node = daemon.safekeepers.get(params.name);
        if (body.action === 'stop') await node.stop();
        else await node.start();
        return node.info();
      },
      { body: schemas.SafekeeperAction },
    )
    .route(
      'GET',
      '/wal/:branch/:file',
      async ({ params }) => {
        const bytes = await daemon.wal.read(params.branch, params.file);
        if (!bytes) throw new NeonError('wal_not_found', `no WAL file ${params.file} for branch ${params.branch}`, { status: 404 });
        return bytes;
      },
      { params: schemas.WalParams },
    )
    .route('GET', '/snapshots', async () => daemon.pageserver.history.snapshots())
    .route(
      'POST',
      '/snapshots',
      async ({ body }) => new RestResponse(201, await daemon.serially(() => createSnapshot(daemon, { name: body.name }))),
      { body: schemas.CreateSnapshot },
    )
    .route('GET', '/snapshots/:name', async ({ params }) => daemon.pageserver.history.snapshot(params.name))
    .route('DELETE', '/snapshots/:name', async ({ params }) => {
      await daemon.serially(() => daemon.pageserver.history.deleteSnapshot(params.name));
      daemon.sync?.schedule();
      return { deleted: params.name };
    })
    .route('GET', '/branches', async () => daemon.pageserver.history.branches())
    .route('POST', '/branches', async ({ body }) => new RestResponse(201, await daemon.serially(() => createBranch(daemon, body))), {
      body: schemas.CreateBranch,
    })
    .route('DELETE', '/branches/:name', async ({ params }) => {
      await daemon.serially(() => deleteBranch(daemon, params.name));
      return { deleted: params.name };
    })
    .route('GET', '/images', async () =>
      daemon.pageserver.history
        .branches()
        .flatMap((b) => daemon.pageserver.images(b.name).map((i) => ({ ...i, endLsn: formatLsn(i.endLsn) }))),
    )
    .route(
      'POST',
      '/images',
      async ({ body }) => {
        const image = await daemon.images!.take(body.compute ?? 'main');
        const { files, ...summary } = image;
        return new RestResponse(201, { ...summary, files: files.length });
      },
      { body: schemas.TakeImage },
    )
    .route(
      'POST',
      '/checkout',
      async ({ body }) => {
        const run = (handle?: OperationHandle) =>
          daemon.serially(() => withCompute(daemon, 'main', () => checkout(daemon, body.target, handle)));
        if (body.background !== true) return run();
        await resolveTarget(daemon, body.target, daemon.computes.get('main')?.record.branch); // refused before it starts
        return new RestResponse(202, operations.start('checkout', String(body.target), run));
      },
      {
        body: schemas.Checkout,
      },
    )
    .route('GET', '/log', async () => historyLog(daemon))
    .route(
      'PUT',
      '/pgs',
      async ({ body }) =>
        new RestResponse(201, await daemon.serially(() => withCompute(daemon, body.name, () => createCompute(daemon, body)))),
      { body: schemas.CreatePg },
    )
    .route('DELETE', '/pgs/:name', async ({ params }) => {
      await daemon.serially(() => withCompute(daemon, params.name, () => destroyCompute(daemon, params.name)));
      return { deleted: params.name };
    })
    .route('POST', '/verify', async ({ body }) => daemon.serially(() => verifyRepository(daemon, body.snapshots)), {
      body: schemas.Verify,
    })
    .route('POST', '/gc', async ({ body }) => daemon.serially(() => collectGarbage(daemon, body.keep_wal_days ?? 7)), {
      body: schemas.Gc,
    })
    // `neon start` on a running repository: bring back failed computes and dead safekeepers, and say which.
    .route('POST', '/repair', async () => ({ repaired: await daemon.health.repair() }), { body: schemas.NoBody })
    .route(
      'POST',
      '/shutdown',
      async () => {
        // Answer first: the shutdown closes this server.
        setImmediate(() => void daemon.shutdown('request'));
        return new RestResponse(202, { stopping: true, pid: process.pid });
      },
      { body: schemas.NoBody },
    );
}

/** What `GET /status` answers. */
export type Status = ReturnType<typeof statusOf>;

/** The daemon, its Postgres binaries and its components, for `GET /status` and `neon status`. */
export function statusOf(daemon: Daemon) {
  // Read once: each safekeeper's entry reads /proc for its memory and CPU.
  const safekeepers = daemon.safekeepers.info();
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
    branch: daemon.computes.get('main')?.record.branch ?? null,
    /** What is not healthy (components down, a synchronous stream that stalls commits); empty when all is well. */
    problems: daemon.health.problems(),
    safekeepers: safekeepers.map(({ rss_bytes, cpu_seconds, dir, ...rest }) => rest),
    images: daemon.images?.status() ?? null,
    sync: daemon.sync?.status() ?? null,
    ...Object.fromEntries([...daemon.pluginStatus].map(([section, read]) => [section, read()])),
    components: [
      ...[...daemon.computes.values()].map((c) => {
        const info = c.info();
        return {
          kind: 'compute',
          name: info.name,
          state: info.state,
          pid: info.pid,
          port: info.port as number | null,
          restarts: info.restarts,
        };
      }),
      ...safekeepers.map((sk) => ({
        kind: 'safekeeper',
        name: sk.name,
        state: sk.state as string,
        pid: sk.pid,
        port: null,
        restarts: sk.restarts,
      })),
    ],
  };
}
