import fs from 'node:fs/promises';
import { NeonError } from '../core/errors.js';
import type { FormatProgress } from '../core/format.js';
import { checkName } from '../pageserver/history.js';
import { takeOfflineImage } from '../pageserver/take-image.js';
import { createCompute } from './computes.js';
import type { ExportHost } from './export.js';
import { prepareImportedDir, progressLogger, recoverImported, stageImport, stagingDirFor, type SnapshotSource } from './import.js';

/** What `neon import` asks for. */
export interface ImportRequest extends SnapshotSource {
  /** The new branch (and its compute); default `import-<time>`. */
  branch?: string;
}

/** What `neon import` did. */
export interface ImportSummary {
  branch: string;
  compute: string;
  snapshotPath: string;
  snapshotFormat: string;
  description: string;
  systemId: string;
}

/** The system identifier of the cluster whose history this repository holds (from any of its base images). */
async function repositorySystemId(daemon: ExportHost): Promise<string> {
  for (const branch of daemon.pageserver.history.branches()) {
    const [image] = daemon.pageserver.images(branch.name);
    if (image) return (await daemon.pageserver.readImage(image.key)).systemId;
  }
  throw new NeonError('no_image', 'this repository has no base image yet: start it once (neon start) before importing', { status: 409 });
}

/**
 * `neon import`: a backup of this repository's own cluster (same system identifier: an earlier `neon export`, a
 * pg_basebackup of a compute) becomes a new root branch with a primary compute. A backup of another cluster is
 * refused before anything is written: branches of one repository share WAL and pages, which only makes sense for
 * one cluster (Postgres itself refuses WAL of another system identifier), so another cluster gets a repository of
 * its own (`neon init --snapshot_path`). A failed import leaves the repository as it was.
 */
export async function importBranch(daemon: ExportHost, request: ImportRequest, onProgress?: (progress: FormatProgress) => void): Promise<ImportSummary> {
  const stamp = new Date().toISOString().replace(/[-:]/g, '').replace('T', '-').slice(0, 15);
  const branch = checkName('branch', request.branch ?? `import-${stamp}`);
  if (daemon.pageserver.history.hasBranch(branch)) throw new NeonError('branch_exists', `a branch named "${branch}" already exists`, { status: 409 });
  if (daemon.computes.has(branch)) throw new NeonError('pg_exists', `a compute named "${branch}" already exists: choose another --branch`, { status: 409 });
  const expected = await repositorySystemId(daemon);
  const log = daemon.log.child('import');
  const stagingDir = stagingDirFor(daemon.repo.dir);
  await fs.rm(stagingDir, { recursive: true, force: true });
  const progress = progressLogger(log, 'import');
  const staged = await stageImport(daemon.hooks, request, {
    repoDir: daemon.repo.dir,
    cwd: daemon.repo.dir,
    stagingDir,
    log,
    onProgress: (p) => {
      progress(p);
      onProgress?.(p);
    },
  });
  try {
    const { result } = staged;
    if (result.systemId !== expected) {
      throw new NeonError(
        'system_id_mismatch',
        `${staged.from} holds a cluster with system identifier ${result.systemId}, this repository's is ${expected}: a repository holds the history of one cluster, ` +
          `so another cluster cannot be a branch of it. Import it into a repository of its own: neon init --snapshot_path ${request.path} --snapshot_format ${staged.format} --repo OTHER_FOLDER`,
        { status: 409 },
      );
    }
    if (result.pgVersion !== daemon.binaries.version) {
      throw new NeonError('bad_pg_version', `${staged.from} holds a PostgreSQL ${result.pgVersion} cluster; this repository runs PostgreSQL ${daemon.binaries.version}`);
    }
    const main = daemon.compute('main').record;
    await prepareImportedDir(staged.dir, daemon.pgUser, log);
    // Its computes log in as the main login (as every branch's do): that role gets the main password here.
    await recoverImported({ binaries: daemon.binaries, dataDir: staged.dir, pgUser: daemon.pgUser, password: main.password });
    await daemon.pageserver.history.addBranch({ name: branch, parent: null, forkLsn: null, createdAt: new Date().toISOString() });
    try {
      await daemon.pageserver.takeImage((mirror) =>
        takeOfflineImage({ store: daemon.pageserver.store, branch, pgVersion: daemon.binaries.version, dataDir: staged.dir, mirror }),
      );
      const compute = await createCompute(daemon, { name: branch, branch });
      daemon.sync?.schedule();
      return { branch, compute: compute.name, snapshotPath: staged.from, snapshotFormat: staged.format, description: result.description, systemId: result.systemId };
    } catch (error) {
      await daemon.pageserver.history.deleteBranch(branch).catch(() => undefined);
      throw error;
    }
  } finally {
    await fs.rm(stagingDir, { recursive: true, force: true });
  }
}
