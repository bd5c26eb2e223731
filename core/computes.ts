import fs from 'node:fs';
import path from 'node:path';
import type { ComputeInfo } from './compute.js';
import type { Daemon } from './daemon.js';
import { NeonError } from './errors.js';
import { freePort } from './net.js';
import type { ComputeRecord } from './repository.js';
import { resolveTarget } from './snapshots.js';
import { checkName } from '../pageserver/history.js';

/** `PUT /pgs`: what a new compute is to be. */
export interface CreateComputeRequest {
  name?: unknown;
  at?: unknown;
  read_only?: unknown;
}

/**
 * Create a static compute: a read-only Postgres frozen at a point of history (snapshot, LSN or time), made from the
 * newest base image before it and a short WAL replay that pauses there. Cheap to make, for looking at the past.
 */
export async function createStaticCompute(daemon: Daemon, request: CreateComputeRequest): Promise<ComputeInfo> {
  const name = checkName('compute', request.name);
  if (daemon.computes.has(name)) throw new NeonError('pg_exists', `a compute named "${name}" already exists`, { status: 409 });
  if (request.read_only !== true || typeof request.at !== 'string') {
    throw new NeonError(
      'bad_request',
      'a compute is made at a point of history for now: give "at" (snapshot, LSN or time) and "read_only": true',
      {
        status: 400,
      },
    );
  }
  const target = await resolveTarget(daemon, request.at);
  const home = path.join(daemon.repo.computesDir, name);
  const main = daemon.compute('main').record;
  try {
    fs.mkdirSync(home, { recursive: true, mode: 0o755 });
    const prepared = await daemon.pageserver.prepare(
      target.branch,
      { lsn: target.lsn, time: target.time, timeline: target.timeline, action: 'pause' },
      path.join(home, 'pgdata'),
      path.join(home, 'wal'),
    );
    // The image holds the main compute's roles: the same login works here.
    const record: ComputeRecord = {
      name,
      branch: target.branch,
      dataDir: path.join('computes', name, 'pgdata'),
      port: await freePort(),
      user: main.user,
      password: main.password,
      database: main.database,
      running: true,
      createdAt: new Date().toISOString(),
      readOnly: true,
      at: request.at,
      recovery: { settings: prepared.settings, until: 'paused' },
    };
    await daemon.saveCompute(record);
    await daemon.addCompute(record).start();
    return daemon.compute(name).info();
  } catch (error) {
    await destroyCompute(daemon, name, { force: true }).catch(() => undefined);
    throw error;
  }
}

/** `DELETE /pgs/:name`: stop a compute and remove its data directory; its branch and history stay. */
export async function destroyCompute(daemon: Daemon, name: string, options: { force?: boolean } = {}): Promise<void> {
  if (name === 'main')
    throw new NeonError('pg_main', 'the main compute cannot be destroyed (neon pg stop -n main stops it)', { status: 400 });
  const compute = daemon.computes.get(name);
  if (!compute && !options.force) daemon.compute(name);
  await compute?.stop();
  daemon.computes.delete(name);
  const state = await daemon.repo.readState();
  delete state.computes[name];
  await daemon.repo.writeState(state);
  fs.rmSync(path.join(daemon.repo.computesDir, name), { recursive: true, force: true });
}
