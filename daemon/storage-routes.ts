import { NeonError, messageOf } from '../core/errors.js';
import { RestResponse, type RestServer } from '../core/rest.js';
import type { Storage } from '../core/storage.js';
import type { Daemon } from './daemon.js';
import { chainOf, listRecords, readStoredHistory } from './remote.js';
import { computesUsing, registryOf } from './storage-computes.js';
import { readStoredRepository } from './storage-sync.js';
import { pullSnapshot, pushSnapshot } from './transfer.js';
import { Operations } from './operations.js';

/** What `GET /storages/:name` answers besides the name, type and URL. */
export interface StorageContents {
  reachable: boolean;
  error: string | null;
  repository: { systemId: string; pgVersion: number } | null;
  snapshots: { name: string; branch: string; lsn: string; createdAt: string; source: 'pushed' | 'synced' }[];
  branches: string[];
  objects: number;
  bytes: number;
}

/** Read what a storage holds: its repository, snapshots and branches, and a count of its objects. */
export async function describeStorage(storage: Storage): Promise<StorageContents> {
  const contents: StorageContents = { reachable: true, error: null, repository: null, snapshots: [], branches: [], objects: 0, bytes: 0 };
  try {
    for await (const object of storage.list('')) {
      contents.objects++;
      contents.bytes += object.size;
    }
    const stored = await readStoredRepository(storage);
    contents.repository = stored ? { systemId: stored.systemId, pgVersion: stored.pgVersion } : null;
    const branches = new Set<string>();
    for (const record of await listRecords(storage)) {
      const { name, branch, lsn, createdAt } = record.snapshot;
      contents.snapshots.push({ name, branch, lsn, createdAt, source: 'pushed' });
      for (const ref of record.wal) branches.add(ref.branch);
    }
    const history = await readStoredHistory(storage);
    for (const snapshot of Object.values(history?.snapshots ?? {})) {
      if (contents.snapshots.some((s) => s.name === snapshot.name)) continue;
      const { name, branch, lsn, createdAt } = snapshot;
      contents.snapshots.push({ name, branch, lsn, createdAt, source: 'synced' });
    }
    for (const name of Object.keys(history?.branches ?? {})) for (const span of chainOf(history!.branches, name)) branches.add(span.branch);
    contents.branches = [...branches].sort();
    contents.snapshots.sort((a, b) => (a.createdAt < b.createdAt ? -1 : 1));
  } catch (error) {
    // A storage written by a newer neon is reachable, but not readable here: say so rather than hiding it.
    if (error instanceof NeonError && error.code === 'bad_format') throw error;
    contents.reachable = false;
    contents.error = messageOf(error);
  }
  return contents;
}

function stringField(body: Record<string, unknown>, key: string, what: string): string {
  const value = body[key];
  if (typeof value !== 'string' || !value) throw new NeonError('bad_request', `"${key}" is needed: ${what}`, { status: 400 });
  return value;
}

/**
 * The seed's `/storages` resource, snapshot push and pull as operations, and `/operations` to follow them.
 * Credentials never appear: URLs with them are refused, and a storage's keys come from the environment.
 */
export function registerStorageRoutes(rest: RestServer, daemon: Daemon, operations = new Operations(daemon.log.child('operations'))): RestServer {
  const registry = () => registryOf(daemon);
  return rest
    .route('GET', '/storages', async () => registry().list())
    .route('PUT', '/storages', async ({ body }) => {
      const { entry, storage } = await registry().check(body, daemon.meta.projectDir);
      // Refuse what cannot be used (unreachable, a newer format) before anything is saved.
      await readStoredRepository(storage);
      for await (const _ of storage.list('snapshots/')) break;
      return new RestResponse(201, await registry().attach(entry));
    })
    .route('GET', '/storages/:name', async ({ params }) => {
      const entry = await registry().get(params.name);
      const { storage } = await registry().open(params.name);
      return { ...entry, ...(await describeStorage(storage)) };
    })
    .route('DELETE', '/storages/:name', async ({ params }) => {
      await registry().detach(params.name, await computesUsing(daemon, params.name));
      return { detached: params.name };
    })
    .route('POST', '/snapshots/:name/push', async ({ params, body }) => {
      daemon.pageserver.history.snapshot(params.name);
      const to = stringField(body, 'to', 'a storage name or URL to push to');
      const { storage } = await registry().open(to, daemon.meta.projectDir);
      const op = operations.start('push', `${params.name} to ${to}`, (handle) => pushSnapshot(daemon, storage, params.name, handle));
      return new RestResponse(202, op);
    })
    .route('POST', '/snapshots/:name/pull', async ({ params, body }) => {
      const from = stringField(body, 'from', 'a storage name or URL to pull from');
      const { storage, name } = await registry().open(from, daemon.meta.projectDir);
      const into = { pageserver: daemon.pageserver, repoDir: daemon.repo.dir, registry: registry(), pgVersion: daemon.binaries.version };
      const op = operations.start('pull', `${params.name} from ${from}`, (handle) =>
        daemon.serially(async () => {
          const { record: _record, ...result } = await pullSnapshot(into, storage, name, params.name, handle);
          return result;
        }),
      );
      return new RestResponse(202, op);
    })
    .route('GET', '/operations', async () => operations.list())
    .route('GET', '/operations/:id', async ({ params }) => operations.get(params.id));
}
