// A plain PostgreSQL cluster of the embedded binaries, for tests that drive pageserver code without a daemon:
// initdb with trust auth, servers on a Unix socket only, run as the unprivileged Postgres user.
import fs from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { freePort } from '../lib/net.js';
import { embeddedBinaries, reachableBinaries } from '../postgres/binaries.js';
import { asUser, chownTo, type PgUser } from '../postgres/user.js';

export interface TestCluster {
  /** The data directory made by initdb. */
  data: string;
  socket: string;
  port: number;
  /** Run a binary of the embedded Postgres as the Postgres user. */
  run(bin: string, args: string[]): Promise<unknown>;
  /** pg_ctl start on `dataDir` (default: data), logging to `<dir>/<log>`, with extra server options. */
  start(options?: { dataDir?: string; log?: string; settings?: string }): Promise<unknown>;
  /** pg_ctl stop -m fast of `dataDir` (default: data). */
  stop(dataDir?: string): Promise<unknown>;
}

/** initdb a cluster in `<dir>/data` (`dir` must exist); undefined when the embedded Postgres is not installed. */
export async function testCluster(dir: string, pgUser: PgUser | undefined, initdbArgs: string[] = []): Promise<TestCluster | undefined> {
  const embedded = await embeddedBinaries();
  if (!embedded) return undefined;
  const { binDir } = await reachableBinaries(embedded, pgUser);
  const data = path.join(dir, 'data');
  const socket = path.join(dir, 'sock');
  fs.mkdirSync(socket, { mode: 0o755 });
  await chownTo(pgUser, dir, true);
  const run = (bin: string, args: string[]) => execa(path.join(binDir, bin), args, { ...asUser(pgUser), env: { LC_ALL: 'C' }, stdin: 'ignore' });
  await run('initdb', ['-D', data, '-U', 'postgres', '--auth=trust', '--no-sync', '--locale=C', ...initdbArgs]);
  const port = await freePort();
  return {
    data,
    socket,
    port,
    run,
    start: ({ dataDir = data, log = 'log', settings = '' } = {}) =>
      run('pg_ctl', ['-D', dataDir, '-l', path.join(dir, log), '-w', '-t', '120', '-o', `-p ${port} -k ${socket} -c listen_addresses='' ${settings}`, 'start']),
    stop: (dataDir = data) => run('pg_ctl', ['-D', dataDir, '-w', '-m', 'fast', 'stop']),
  };
}
