// bench/snapshot: what snapshots, base images and computes at a point of history cost, against the usual tools.
// For each database size (pgbench -i, scale ≈ size in MB × 0.07), on a fresh neon repository and a fresh plain
// cluster of the same scale:
//   1. neon snapshot create: the CLI round trip, and the daemon's part (the same REST call without the CLI)
//   2. the first base image (neon image create) vs pg_basebackup -Ft -c fast of the plain cluster: time, MB/s
//   3. an incremental image after 1% of pgbench_accounts' rows changed: stored bytes vs changed-page bytes
//   4. neon pg create --at SNAPSHOT --read-only + first query vs cp -a of the stopped cluster + pg_ctl start -w +
//      first query, and vs pg_basebackup -D of the running cluster + pg_ctl start -w + first query
//   5. neon pg create --at a snapshot 100 MB of WAL past the newest image: the replay cost
//   6. pgBackRest (Debian's 2.45) full and block-incremental backups of the plain cluster, as the peer
// Everything uses the system PostgreSQL 15 (neon init --pg-version 15): pg_basebackup refuses newer servers.
//
//   npm run bench:snapshot [-- --sizes 100,1000] [--runs 3] [--keep-logs DIR]
import fs from 'node:fs';
import path from 'node:path';
import { freePort } from '../lib/net.js';
import { CLI, cleanup, neon, neonJson, tmpDir } from '../testkit/env.js';
import * as lib from './lib-snapshot.js';
import { MB, PlainCluster, bin, median, run, timed } from './lib-snapshot.js';

const sizes = lib.listArg('sizes', [100, 1000]);
const runs = lib.listArg('runs', [3])[0];
const WAL_PAST_IMAGE = 100 * MB;
/** --keep-logs DIR: copy each neon repository's logs/ there before it is removed (to see where the time goes). */
const keepLogs = process.argv.includes('--keep-logs') ? process.argv[process.argv.indexOf('--keep-logs') + 1] : undefined;
/** Background images off: the bench decides when an image is taken. */

if (!fs.existsSync(bin('pg_basebackup'))) {
  console.error(`bench:snapshot needs the system PostgreSQL 15 (${lib.PG_BIN}): apt-get install postgresql-15`);
  process.exit(1);
}
if (!fs.existsSync(CLI)) {
  console.error('bench:snapshot drives the built CLI: run npm run build first');
  process.exit(1);
}
const pgbrVersion = lib.pgBackRestVersion();

/** Folders still to clean up, for the error path and Ctrl-C. */
const live = new Set<string>();
process.on('SIGINT', () => {
  console.error('interrupted: stopping everything');
  void Promise.all([...live].map((dir) => cleanup(dir))).finally(() => process.exit(130));
});

type Metrics = Record<string, number>;

/** neon: a fresh repository, pgbench -i, then steps 1–5. */
async function neonRun(scale: number): Promise<Metrics> {
  const dir = tmpDir('neon-bench-snap-');
  live.add(dir);
  const cwd = { cwd: dir };
  const repo = path.join(dir, '.neon');
  const m: Metrics = {};
  try {
    const { url, dbBytes } = await lib.loadedNeon(dir, scale);
    m.dbBytes = dbBytes;

    // 2. The first base image with data (neon init took a tiny offline one of the empty cluster).
    const [imageMs, image] = await timed(() => neonJson(['image', 'create'], cwd));
    Object.assign(m, { imageMs, imageRaw: image.raw_bytes, imageNew: image.new_bytes });

    // 1. Snapshots: through the CLI, and the same REST call without the CLI's process start.
    [m.snapCliMs] = await timed(() => neonJson(['snapshot', 'create', 'base'], cwd));
    m.snapRestMs = await lib.restCall(repo, 'POST', '/snapshots', { name: 'base-rest' });

    // 4. A read-only compute at the snapshot, until it answers.
    let requestedAt = Date.now();
    [m.matMs] = await timed(async () => {
      const made = await neonJson(['pg', 'create', '-n', 'at-base', '--at', 'base', '--read-only'], cwd);
      await lib.firstQuery(made.connection_string);
    });
    ({ restoreMs: m.matRestoreMs, replayMs: m.matReplayMs } = lib.computePhases(repo, 'at-base', requestedAt));
    await neonJson(['pg', 'destroy', '-n', 'at-base'], cwd);

    // 3. 1% of the rows change; the next image stores only what changed.
    await lib.changeOnePercent(url, scale);
    const [incrMs, incr] = await timed(() => neonJson(['image', 'create'], cwd));
    const { changed } = await lib.newChunks(repo);
    Object.assign(m, { incrMs, incrNew: incr.new_bytes, changedBytes: changed * 8192 });

    // 5. 100 MB of WAL past that image, a snapshot there, a compute at it.
    await lib.writeWal(url, incr.end_lsn, WAL_PAST_IMAGE);
    const far = await neonJson(['snapshot', 'create', 'far'], cwd);
    m.farWal = await lib.walBetween(url, incr.startLsn, far.lsn);
    requestedAt = Date.now();
    [m.farMs] = await timed(async () => {
      const made = await neonJson(['pg', 'create', '-n', 'at-far', '--at', 'far', '--read-only'], cwd);
      await lib.firstQuery(made.connection_string);
    });
    ({ restoreMs: m.farRestoreMs, replayMs: m.farReplayMs } = lib.computePhases(repo, 'at-far', requestedAt));
    await neonJson(['pg', 'destroy', '-n', 'at-far'], cwd);
    await neon(['stop'], cwd);
    return m;
  } finally {
    await lib.finishRun(dir, repo, scale, keepLogs);
    live.delete(dir);
  }
}

/** The peers: a plain PostgreSQL 15 cluster of the same scale; pg_basebackup, cp -a, pgBackRest. */
async function peerRun(scale: number): Promise<Metrics> {
  const dir = tmpDir('neon-bench-snap-pg-');
  live.add(dir);
  const cluster = new PlainCluster(dir, await freePort());
  const m: Metrics = {};
  const copies: string[] = [];
  let started = false;
  try {
    started = true;
    const { url, dbBytes } = await lib.loadedCluster(cluster, scale);
    m.dbBytes = dbBytes;
    const connect = ['-h', '127.0.0.1', '-p', String(cluster.port), '-U', 'postgres', '-w', '-c', 'fast'];

    // 2. pg_basebackup -Ft (WAL streamed alongside, as by default).
    const tarDir = path.join(dir, 'tar');
    [m.tarMs] = await timed(() => run(bin('pg_basebackup'), ['-Ft', '-D', tarDir, ...connect], { asPg: true }));
    m.tarBytes = fs.statSync(path.join(tarDir, 'base.tar')).size;
    fs.rmSync(tarDir, { recursive: true });

    // 4b. pg_basebackup -D of the running cluster, started beside it, until it answers.
    const port2 = await freePort();
    const plain = path.join(dir, 'plain');
    copies.push(plain);
    [m.bbStartMs] = await timed(async () => {
      run(bin('pg_basebackup'), ['-D', plain, ...connect], { asPg: true });
      cluster.start(plain, `-p ${port2} -c archive_mode=off`);
      await lib.firstQuery(cluster.url(port2));
    });
    cluster.stop(plain);
    fs.rmSync(plain, { recursive: true });

    // 4a. cp -a of the stopped cluster, started, until it answers.
    cluster.stop();
    const copy = path.join(dir, 'copy');
    copies.push(copy);
    [m.cpStartMs] = await timed(async () => {
      run('cp', ['-a', cluster.data, copy]);
      cluster.start(copy, `-p ${port2} -c archive_mode=off`);
      await lib.firstQuery(cluster.url(port2));
    });
    cluster.stop(copy);
    fs.rmSync(copy, { recursive: true });

    // 6. pgBackRest: archiving on (a restart), stanza, full backup, the same 1% change, block-incremental backup.
    if (pgbrVersion) {
      const { config, repo, pgbr } = await lib.pgBackRestStanza(cluster);
      fs.appendFileSync(
        path.join(cluster.data, 'postgresql.conf'),
        `archive_mode = on\narchive_command = 'pgbackrest --config=${config} --stanza=bench archive-push %p'\n`,
      );
      cluster.start();
      pgbr('stanza-create');
      [m.fullMs] = await timed(() => pgbr('--type=full', 'backup'));
      m.fullBytes = lib.duBytes(path.join(repo, 'backup'));
      m.fullRepoBytes = lib.duBytes(repo);
      await lib.changeOnePercent(url, scale);
      [m.pgbrIncrMs] = await timed(() => pgbr('--type=incr', 'backup'));
      m.pgbrIncrBytes = lib.duBytes(path.join(repo, 'backup')) - m.fullBytes;
    } else {
      cluster.start();
    }
    return m;
  } finally {
    if (started) for (const data of [...copies, cluster.data]) if (fs.existsSync(data)) cluster.stop(data);
    await cleanup(dir);
    live.delete(dir);
  }
}

// ---- report ----

const sec = (ms: number) => (Number.isFinite(ms) ? `${(ms / 1000).toFixed(2)} s` : '–');
const mb = (bytes: number) => (Number.isFinite(bytes) ? `${(bytes / MB).toFixed(1)} MB` : '–');
const rate = (bytes: number, ms: number) => (Number.isFinite(bytes / ms) ? `${(bytes / MB / (ms / 1000)).toFixed(0)} MB/s` : '–');
const x = (ratio: number) => (Number.isFinite(ratio) ? `${ratio.toFixed(2)}×` : '–');
const check = (ratio: number, target: number) => (Number.isFinite(ratio) ? `≤ ${target} ${ratio <= target ? '✓' : '✗'}` : `≤ ${target}`);

function report(size: number, scale: number, neonRuns: Metrics[], peerRuns: Metrics[]): void {
  const n = (key: string) => median(neonRuns.map((r) => r[key]));
  const p = (key: string) => median(peerRuns.map((r) => r[key]));
  const pgbr = pgbrVersion ? '' : ' (pgBackRest not installed: skipped)';
  console.log(
    `\n## ~${size} MB: pgbench scale ${scale}; pg_database_size ${mb(n('dbBytes'))} (neon), ${mb(p('dbBytes'))} (plain); ` +
      `${runs} run(s), medians\n`,
  );
  console.log('| measure | neon | peer | neon / peer | target |');
  console.log('|---|---:|---:|---:|---|');
  const row = (...cells: string[]) => console.log(`| ${cells.join(' | ')} |`);
  row('1. snapshot create: CLI round trip', sec(n('snapCliMs')), '', '', '');
  row('1. snapshot create: daemon part (REST call alone)', sec(n('snapRestMs')), '', '', '');
  row('2. first base image vs pg_basebackup -Ft: time', sec(n('imageMs')), sec(p('tarMs')), x(n('imageMs') / p('tarMs')), '');
  row(
    '2. first base image vs pg_basebackup -Ft: throughput (raw bytes / time)',
    `${rate(n('imageRaw'), n('imageMs'))} (${mb(n('imageRaw'))} raw, ${mb(n('imageNew'))} stored)`,
    `${rate(p('tarBytes'), p('tarMs'))} (${mb(p('tarBytes'))} base.tar)`,
    '',
    '',
  );
  const ours = n('incrNew') / n('changedBytes');
  row(
    '3. image after 1% change: stored / changed-page bytes',
    `${mb(n('incrNew'))} / ${mb(n('changedBytes'))} = ${x(ours)}`,
    pgbrVersion ? `pgBackRest incr ${mb(p('pgbrIncrBytes'))} = ${x(p('pgbrIncrBytes') / n('changedBytes'))}` : 'skipped',
    '',
    `${check(ours, 1.2)} (pgBackRest block incr: ~1.65× per the issue)`,
  );
  row(
    '3. image after 1% change: time',
    sec(n('incrMs')),
    pgbrVersion ? `pgBackRest incr ${sec(p('pgbrIncrMs'))}` : 'skipped',
    x(n('incrMs') / p('pgbrIncrMs')),
    '',
  );
  const vsCp = n('matMs') / p('cpStartMs');
  row('4. compute at snapshot → first query, vs cp -a + pg_ctl start -w', sec(n('matMs')), sec(p('cpStartMs')), x(vsCp), check(vsCp, 1.2));
  row(
    '4. compute at snapshot → first query, vs pg_basebackup -D + pg_ctl start -w',
    sec(n('matMs')),
    sec(p('bbStartMs')),
    x(n('matMs') / p('bbStartMs')),
    '',
  );
  row('4. … of which: request → Postgres starts (restore image, stage WAL)', sec(n('matRestoreMs')), '', '', '');
  row(
    `5. compute ${mb(n('farWal'))} of WAL past the image → first query`,
    sec(n('farMs')),
    '',
    x(n('farMs') / n('matMs')) + ' of step 4',
    '',
  );
  row('5. … of which: request → Postgres starts (restore image, stage WAL)', sec(n('farRestoreMs')), '', '', '');
  row(
    '5. … of which: WAL replay (redo starts → paused at the point)',
    `${sec(n('farReplayMs'))} (${rate(n('farWal'), n('farReplayMs'))} of WAL)`,
    '',
    '',
    '',
  );
  row(`6. pgBackRest full backup${pgbr}: time; repo`, '', pgbrVersion ? `${sec(p('fullMs'))}; ${mb(p('fullBytes'))}` : 'skipped', '', '');
  row(
    `6. neon first image vs pgBackRest full${pgbr}: time; stored`,
    `${sec(n('imageMs'))}; ${mb(n('imageNew'))}`,
    pgbrVersion ? `${sec(p('fullMs'))}; ${mb(p('fullBytes'))}` : 'skipped',
    pgbrVersion ? `${x(n('imageMs') / p('fullMs'))}; ${x(n('imageNew') / p('fullBytes'))}` : '',
    '',
  );
  row(
    `6. neon image vs pgBackRest incr after the 1% change${pgbr}: time; stored`,
    `${sec(n('incrMs'))}; ${mb(n('incrNew'))}`,
    pgbrVersion ? `${sec(p('pgbrIncrMs'))}; ${mb(p('pgbrIncrBytes'))}` : 'skipped',
    pgbrVersion ? `${x(n('incrMs') / p('pgbrIncrMs'))}; ${x(n('incrNew') / p('pgbrIncrBytes'))}` : '',
    '',
  );
}

console.log('# bench:snapshot — snapshots, base images and computes at a snapshot vs pg_basebackup, cp -a and pgBackRest');
console.log(lib.machine());
console.log(
  `Everything on the system PostgreSQL 15 (neon init --pg-version 15; pg_basebackup 15 refuses newer servers). ` +
    `pg_basebackup with -c fast (neon's BASE_BACKUP uses a fast checkpoint too) and its default -X stream. ` +
    `Step 4's snapshot is taken right after the first image, step 5's 100 MB of WAL past the second.`,
);
console.log(
  pgbrVersion
    ? `${pgbrVersion}: repo1-bundle=y, repo1-block=y (beta=y: block incremental is beta in 2.45), compress-type=${lib.PGBR_COMPRESS}, ` +
        `start-fast=y, archive-check=n, process-max 1 (default); repo sizes are du -sb of repo/backup (the WAL archive left out).`
    : 'pgBackRest not installed (and not installable here): its rows are skipped.',
);
console.log(
  `Changed-page bytes = distinct 8 KiB chunks of the new image not in the previous one × 8192; stored bytes are compressed. ` +
    `The phases of steps 4 and 5 come from the compute's Postgres log (its own time stamps).`,
);

for (const size of sizes) {
  const scale = Math.max(1, Math.round(size * 0.07));
  const neonRuns: Metrics[] = [];
  const peerRuns: Metrics[] = [];
  for (let i = 0; i < runs; i++) {
    // Alternate the order so that drift in machine load hits both sides alike.
    for (const side of i % 2 ? (['neon', 'peer'] as const) : (['peer', 'neon'] as const)) {
      process.stderr.write(`~${size} MB, run ${i + 1}/${runs}: ${side}… `);
      const [ms, metrics] = await timed(() => (side === 'neon' ? neonRun(scale) : peerRun(scale)));
      (side === 'neon' ? neonRuns : peerRuns).push(metrics);
      process.stderr.write(`${sec(ms)}\n`);
    }
  }
  report(size, scale, neonRuns, peerRuns);
}
