// Helpers of bench/snapshot.ts: the system PostgreSQL 15, a plain cluster driven with pg_ctl, pgBackRest, timing,
// image manifests and the machine header. Postgres runs as the `postgres` OS user when the bench runs as root.
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { query } from '../testkit/pg.js';
import { cleanup, neonJson } from '../testkit/env.js';
import { asUser, chownTo, isRoot, pgUserFor } from '../postgres/user.js';
import { chunkSetOf, decodeManifest } from '../pageserver/manifest.js';

export const PASSWORD = 'secret';
export const PG_BIN = '/usr/lib/postgresql/15/bin';
export const pgUser = pgUserFor('postgres');
export const bin = (name: string) => path.join(PG_BIN, name);
export const MB = 1024 * 1024;

/** `--name a,b` as numbers, or the fallback. */
export function listArg(name: string, fallback: number[]): number[] {
  const i = process.argv.indexOf(`--${name}`);
  const values =
    i >= 0
      ? String(process.argv[i + 1])
          .split(',')
          .map(Number)
      : [];
  return values.length && values.every((v) => v > 0) ? values : fallback;
}

/** Run a command (as the Postgres user with `asPg`); its stdout, or an error with its output. */
export function run(command: string, args: string[], options: { asPg?: boolean; cwd?: string } = {}): string {
  const env = { ...process.env, PGPASSWORD: PASSWORD };
  const result = spawnSync(command, args, {
    cwd: options.cwd,
    env,
    encoding: 'utf8',
    maxBuffer: 64 * MB,
    ...(options.asPg ? asUser(pgUser) : {}),
  });
  if (result.status !== 0) {
    throw new Error(
      `${path.basename(command)} ${args.join(' ')} failed (${result.status ?? result.signal}): ${result.stderr}${result.stdout}`,
    );
  }
  return result.stdout;
}

/** Milliseconds `fn` took, and its result. */
export async function timed<T>(fn: () => T | Promise<T>): Promise<[number, T]> {
  const t0 = performance.now();
  const value = await fn();
  return [performance.now() - t0, value];
}

export { query } from '../testkit/pg.js';

export const firstQuery = (url: string) => query(url, 'select 1');
export const dbSize = async (url: string) => Number((await query(url, 'select pg_database_size(current_database())::bigint as n'))[0].n);

/** Insert rows into `filler` until `bytes` of WAL were written past `fromLsn`. */
export async function writeWal(url: string, fromLsn: string, bytes: number): Promise<void> {
  await query(url, 'create table if not exists filler (id bigint, pad text)');
  for (;;) {
    const [row] = await query(url, `select pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '${fromLsn}')::bigint as n`);
    if (Number(row.n) >= bytes) return;
    await query(url, "insert into filler select g, repeat('x', 900) from generate_series(1, 20000) g");
  }
}

export async function walBetween(url: string, from: string, to: string): Promise<number> {
  return Number((await query(url, `select pg_wal_lsn_diff('${to}', '${from}')::bigint as n`))[0].n);
}

/** The same ~1% change on both sides: 1% of pgbench_accounts' rows, then a checkpoint. */
export async function changeOnePercent(url: string, scale: number): Promise<void> {
  await query(url, `update pgbench_accounts set abalance = abalance + 1 where aid <= ${scale * 1000}`);
  await query(url, 'checkpoint');
}

export function pgbenchInit(url: string, scale: number): void {
  run(bin('pgbench'), ['-i', '-q', '-s', String(scale), url]);
}

export function median(values: number[]): number {
  const sorted = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  if (!sorted.length) return NaN;
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** Bytes of everything under `dir` (du -sb). */
export function duBytes(dir: string): number {
  return fs.existsSync(dir) ? Number(execFileSync('du', ['-sb', dir], { encoding: 'utf8' }).split(/\s/)[0]) : 0;
}

/** Distinct chunks of the newest image of `branch` that the one before it does not have. */
export async function newChunks(repoDir: string, branch = 'main'): Promise<{ changed: number; total: number }> {
  const dir = path.join(repoDir, 'pageserver', 'images', branch);
  const files = fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.json.gz'))
    .sort();
  const chunksOf = async (file: string) =>
    chunkSetOf([await decodeManifest(file, fs.readFileSync(path.join(dir, file)))]);
  const [previous, newest] = await Promise.all(files.slice(-2).map(chunksOf));
  let changed = 0;
  for (const hash of newest) if (!previous.has(hash)) changed++;
  return { changed, total: newest.size };
}

/**
 * Where a static compute's creation went, from its Postgres log (wall-clock stamps, as Date.now()): until Postgres
 * started (choose, restore the image, stage WAL), and WAL replay (redo starts → recovery paused at the point).
 */
export function computePhases(repoDir: string, name: string, requestedAt: number): { restoreMs: number; replayMs: number } {
  const log = fs.readFileSync(path.join(repoDir, 'logs', `compute-${name}.log`), 'utf8');
  const at = (text: string) => {
    const line = log.split('\n').find((l) => l.includes(text));
    const stamp = line && /^(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d\.\d+) UTC/.exec(line);
    return stamp ? Date.parse(`${stamp[1]}T${stamp[2]}Z`) : NaN;
  };
  return { restoreMs: at('starting PostgreSQL') - requestedAt, replayMs: at('pausing at the end of recovery') - at('redo starts at') };
}

/** Time a REST call to the repository's daemon, without the CLI around it: the daemon's part. */
export async function restCall(repoDir: string, method: string, route: string, body?: unknown): Promise<number> {
  const { port } = JSON.parse(fs.readFileSync(path.join(repoDir, 'daemon.json'), 'utf8'));
  const token = fs.readFileSync(path.join(repoDir, 'token'), 'utf8').trim();
  const [ms, response] = await timed(() =>
    fetch(`http://127.0.0.1:${port}${route}`, {
      method,
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify(body ?? {}),
    }).then(async (r) => ({ status: r.status, text: await r.text() })),
  );
  if (response.status >= 300) throw new Error(`${method} ${route}: ${response.status} ${response.text}`);
  return ms;
}

/** A plain PostgreSQL 15 cluster in `dir`, started and stopped with pg_ctl, with a Unix socket in `dir` for pgBackRest. */
export class PlainCluster {
  readonly data: string;
  constructor(
    readonly dir: string,
    readonly port: number,
  ) {
    this.data = path.join(dir, 'data');
  }

  url(port = this.port): string {
    return `postgresql://postgres:${PASSWORD}@127.0.0.1:${port}/postgres`;
  }

  async init(): Promise<void> {
    fs.writeFileSync(path.join(this.dir, 'pw'), `${PASSWORD}\n`);
    await chownTo(pgUser, this.dir, true);
    const flags = ['--auth-local=trust', '--auth-host=scram-sha-256', '--encoding=UTF8', '--locale=C', '--no-instructions'];
    run(bin('initdb'), ['-D', this.data, '-U', 'postgres', `--pwfile=${path.join(this.dir, 'pw')}`, ...flags], { asPg: true });
    // The settings of a neon compute (core/postgres/conf.ts), plus a socket folder.
    fs.appendFileSync(
      path.join(this.data, 'postgresql.conf'),
      `port = ${this.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '${this.dir}'\n` +
        `shared_buffers = 128MB\nwal_level = replica\nmax_wal_senders = 16\nwal_keep_size = 128MB\n`,
    );
  }

  /** pg_ctl start -w of `data` (default the primary), with extra server options. */
  start(data = this.data, options = ''): void {
    run(bin('pg_ctl'), ['start', '-w', '-s', '-D', data, '-l', `${data}.log`, '-o', options], { asPg: true });
  }

  stop(data = this.data): void {
    spawnSync(bin('pg_ctl'), ['stop', '-w', '-s', '-m', 'fast', '-D', data], asUser(pgUser));
  }
}

/** A plain cluster of `scale` in `dir`: created, started, loaded with pgbench, checkpointed. */
export async function loadedCluster(cluster: PlainCluster, scale: number): Promise<{ url: string; dbBytes: number }> {
  await cluster.init();
  cluster.start();
  const url = cluster.url();
  pgbenchInit(url, scale);
  await query(url, 'checkpoint');
  return { url, dbBytes: await dbSize(url) };
}

/** End of a neon run: keep the repository's logs when asked (--keep-logs DIR), then remove its folder and processes. */
export async function finishRun(dir: string, repo: string, scale: number, keepLogs: string | undefined): Promise<void> {
  if (keepLogs && fs.existsSync(path.join(repo, 'logs'))) {
    fs.cpSync(path.join(repo, 'logs'), path.join(keepLogs, `${path.basename(dir)}-scale${scale}`), { recursive: true });
  }
  await cleanup(dir);
}

/** pgBackRest's version, installing the Debian package first when missing and root; undefined when unavailable. */
export function pgBackRestVersion(): string | undefined {
  const version = () => spawnSync('pgbackrest', ['version'], { encoding: 'utf8' }).stdout?.trim() || undefined;
  if (!version() && isRoot()) {
    console.error('pgBackRest missing: apt-get install -y pgbackrest');
    if (spawnSync('apt-get', ['install', '-y', 'pgbackrest'], { stdio: 'ignore' }).status !== 0) {
      spawnSync('apt-get', ['update'], { stdio: 'ignore' });
      spawnSync('apt-get', ['install', '-y', 'pgbackrest'], { stdio: 'ignore' });
    }
  }
  return version();
}

export const PGBR_COMPRESS = 'lz4';

/** A pgBackRest stanza `bench` for `cluster`, its repository in `<dir>/pgbr/repo`. Returns the pgbackrest runner. */
export async function pgBackRestStanza(
  cluster: PlainCluster,
): Promise<{ config: string; repo: string; pgbr: (...args: string[]) => void }> {
  const home = path.join(cluster.dir, 'pgbr');
  const repo = path.join(home, 'repo');
  for (const sub of ['repo', 'log', 'lock']) fs.mkdirSync(path.join(home, sub), { recursive: true });
  const config = path.join(home, 'pgbackrest.conf');
  fs.writeFileSync(
    config,
    `[global]\nrepo1-path=${repo}\nlog-path=${home}/log\nlock-path=${home}/lock\nlog-level-console=warn\nlog-level-file=off\n` +
      `start-fast=y\narchive-check=n\ncompress-type=${PGBR_COMPRESS}\nrepo1-retention-full=10\n` +
      `repo1-bundle=y\nrepo1-block=y\nbeta=y\n\n` +
      `[bench]\npg1-path=${cluster.data}\npg1-port=${cluster.port}\npg1-socket-path=${cluster.dir}\npg1-user=postgres\n`,
  );
  await chownTo(pgUser, home, true);
  const pgbr = (...args: string[]) => void run('pgbackrest', [`--config=${config}`, '--stanza=bench', ...args], { asPg: true });
  return { config, repo, pgbr };
}

/** One line about the machine: cores, CPU, memory, node, Postgres, the temp disk. */
export function machine(): string {
  const version = execFileSync(bin('postgres'), ['--version'], { encoding: 'utf8' }).trim();
  const disk = execFileSync('df', ['-h', os.tmpdir()], { encoding: 'utf8' }).trim().split('\n').pop()!.split(/\s+/);
  const cpu = os.cpus()[0]?.model ?? '?';
  return (
    `${os.cpus().length} cores (${cpu}), ${(os.totalmem() / 1024 ** 3).toFixed(0)} GB RAM, node ${process.version}, ${version} (system, ${PG_BIN}), ` +
    `temp disk ${disk[0]} (${disk[1]}, ${disk[4]} used, mounted on ${disk[5]})`
  );
}

/** Background images off: a benchmark takes its images itself, at known moments. */
export const QUIET_CONFIG = JSON.stringify({ pageserver: { imageAfterMb: 1_000_000, imageIntervalMinutes: 1_000_000 } });

/**
 * A neon repository on PostgreSQL 15 in `dir`, started, with pgbench data of `scale` checkpointed: what the
 * snapshot and image benchmarks start from. Answers the main compute's URL and the database size.
 */
export async function loadedNeon(dir: string, scale: number): Promise<{ url: string; dbBytes: number }> {
  const cwd = { cwd: dir };
  fs.writeFileSync(path.join(dir, 'neon.config.json'), QUIET_CONFIG);
  await neonJson(['init', '--pg-version', '15'], cwd);
  const url: string = (await neonJson(['start'], cwd)).connection_string;
  pgbenchInit(url, scale);
  await query(url, 'checkpoint');
  return { url, dbBytes: await dbSize(url) };
}

/** NEON_BENCH_PROFILE=<dir>: the environment that makes the daemons a benchmark starts profilable (cpu-profile.cjs). */
export const PROFILE_DIR = process.env.NEON_BENCH_PROFILE;
export const profileEnv = (): Record<string, string> =>
  PROFILE_DIR ? { NODE_OPTIONS: `--require ${path.resolve('bench/cpu-profile.cjs')}`, NEON_CPU_PROFILE_DIR: PROFILE_DIR } : {};

/** Run `work`, profiling daemon `pid` meanwhile when NEON_BENCH_PROFILE is set (see cpu-profile.cjs). */
export async function profiled<T>(pid: number, work: () => Promise<T>): Promise<T> {
  if (!PROFILE_DIR) return work();
  process.kill(pid, 'SIGUSR2');
  try {
    return await work();
  } finally {
    process.kill(pid, 'SIGUSR2');
  }
}
