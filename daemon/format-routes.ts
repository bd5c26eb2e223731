import { NeonError } from '../core/errors.js';
import { RestResponse, type RestServer } from '../core/rest.js';
import type { FormatProgress } from '../core/format.js';
import { resolveFormat } from '../core/resolve.js';
import { checkName } from '../pageserver/history.js';
import type { Daemon } from './daemon.js';
import { exportPoint, type ExportRequest } from './export.js';
import { importBranch } from './import-branch.js';
import type { OperationHandle, Operations } from './operations.js';
import { registryOf } from './storage-computes.js';
import { pushSnapshot } from './transfer.js';

type Body = Record<string, unknown>;

/** The body as an object with only `allowed` fields (a 400 naming the first stranger). */
function fieldsOf(body: unknown, allowed: string[]): Body {
  if (body === undefined || body === null) return {};
  if (typeof body !== 'object' || Array.isArray(body)) throw new NeonError('bad_request', 'the request body must be a JSON object');
  const unknown = Object.keys(body).find((key) => !allowed.includes(key));
  if (unknown) throw new NeonError('bad_request', `unknown field "${unknown}": expected ${allowed.join(', ')}`);
  return body as Body;
}

function text(body: Body, key: string, what?: string): string | undefined {
  const value = body[key];
  if (value === undefined || value === null) {
    if (what) throw new NeonError(`${key}_missing`, `"${key}" is needed: ${what}`);
    return undefined;
  }
  if (typeof value !== 'string' || !value.trim()) throw new NeonError('bad_request', `"${key}" must be a non-empty string`);
  return value;
}

/** Neon's own layout (a storage neon pushes to), beside the backup formats plugins provide. */
const NEON_FORMAT = 'neon';
const PATH = 'the folder or URL (file:///…, s3://bucket/prefix) of the backup';
const FORMAT = 'pgdata, tar or walg';

/** Format progress (bytes done per step) as operation progress. */
function reporter(handle: OperationHandle): (progress: FormatProgress) => void {
  let step = '';
  let done = 0;
  return (progress) => {
    if (progress.step !== step) {
      step = progress.step;
      done = 0;
      handle.step(step, progress.totalBytes ?? null);
    }
    if (progress.bytes > done) handle.add(progress.bytes - done);
    done = Math.max(done, progress.bytes);
  };
}

/** Refuse at once (a 4xx) what would only fail later inside the operation: an unknown format, one that cannot do this. */
async function checkFormat(daemon: Daemon, name: string, direction: 'exportTo' | 'importFrom'): Promise<void> {
  const format = await resolveFormat(daemon.hooks, name);
  if (!format[direction]) throw new NeonError('format_unsupported', `snapshot format ${name} cannot ${direction === 'exportTo' ? 'export' : 'import'}`);
}

/**
 * Import and export in other formats (seed 003): `POST /snapshots/:name/actions {action: "export", …}`, `POST
 * /export` (an LSN, a time, or a branch's present) and `POST /import` (a backup of this cluster as a new branch).
 * Each starts an operation (202) that `GET /operations/:id` follows; bad input is a 4xx before it starts.
 */
export function registerFormatRoutes(rest: RestServer, daemon: Daemon, operations: Operations): RestServer {
  const startExport = async (request: ExportRequest) => {
    await checkFormat(daemon, request.snapshotFormat, 'exportTo');
    const what = request.snapshot ?? request.at ?? request.branch ?? 'main';
    return new RestResponse(
      202,
      operations.start('export', `${what} to ${request.snapshotPath} (${request.snapshotFormat})`, (handle) => exportPoint(daemon, request, reporter(handle))),
    );
  };
  return rest
    .route('POST', '/snapshots/:name/actions', async ({ params, body }) => {
      const input = fieldsOf(body, ['action', 'snapshot_path', 'snapshot_format']);
      if (input.action !== 'export') throw new NeonError('bad_request', `"action" must be "export", not ${JSON.stringify(input.action)}`);
      daemon.pageserver.history.snapshot(params.name); // a 404 for an unknown snapshot, before anything else
      if (input.snapshot_format === NEON_FORMAT) {
        // Seed 003's "neon format" is neon's own layout: the same as `POST /snapshots/:name/push`.
        const to = text(input, 'snapshot_path', PATH)!;
        const { storage } = await registryOf(daemon).open(to, daemon.meta.projectDir);
        return new RestResponse(202, operations.start('push', `${params.name} to ${to}`, (handle) => pushSnapshot(daemon, storage, params.name, handle)));
      }
      return startExport({
        snapshot: params.name,
        snapshotPath: text(input, 'snapshot_path', PATH)!,
        snapshotFormat: text(input, 'snapshot_format', FORMAT)!,
      });
    })
    .route('POST', '/export', async ({ body }) => {
      const input = fieldsOf(body, ['snapshot_path', 'snapshot_format', 'at', 'branch']);
      if (input.snapshot_format === NEON_FORMAT) {
        throw new NeonError('bad_request', 'the neon format moves snapshots: name one (POST /snapshots/:name/actions, neon export --snapshot NAME; take one with neon snapshot create)');
      }
      return startExport({
        snapshotPath: text(input, 'snapshot_path', PATH)!,
        snapshotFormat: text(input, 'snapshot_format', FORMAT)!,
        at: text(input, 'at'),
        branch: text(input, 'branch'),
      });
    })
    .route('POST', '/import', async ({ body }) => {
      const input = fieldsOf(body, ['snapshot_path', 'snapshot_format', 'branch', 'backup', 'force']);
      if (input.force !== undefined && typeof input.force !== 'boolean') throw new NeonError('bad_request', '"force" must be true or false');
      const request = {
        path: text(input, 'snapshot_path', PATH)!,
        format: text(input, 'snapshot_format', FORMAT)!,
        branch: text(input, 'branch'),
        backup: text(input, 'backup'),
        force: input.force === true,
      };
      await checkFormat(daemon, request.format, 'importFrom');
      if (request.branch !== undefined) {
        checkName('branch', request.branch);
        if (daemon.pageserver.history.hasBranch(request.branch)) throw new NeonError('branch_exists', `a branch named "${request.branch}" already exists`, { status: 409 });
      }
      const op = operations.start('import', `${request.path} (${request.format})`, (handle) =>
        daemon.serially(() => importBranch(daemon, request, reporter(handle))),
      );
      return new RestResponse(202, op);
    });
}
