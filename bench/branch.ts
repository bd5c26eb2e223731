// bench/branch: what a new branch with a read-write compute costs, against copying a plain cluster.
// For each database size (pgbench -i, scale ≈ size in MB × 0.07), on a fresh neon repository and a fresh plain
// PostgreSQL 15 cluster of the same scale:
//   1. neon pg create -n bN (a branch forked from main at its present, a primary on it) → first query, with a base
//      image taken after the load; where the time went, from the compute's log; the daemon's part (REST alone);
//      and the same without that image (all of the load's WAL replayed)
//   2. peer (a): cp -a of the stopped plain data dir + pg_ctl start -w + first query      target: neon ≤ 1.2 × (a)
//   3. peer (b): pg_basebackup -D of the running plain primary + pg_ctl start -w + query   target: neon ≤ 0.5 × (b)
//   4. ten computes c0..c9 created one after another: time, then the memory of the repository's processes
// Everything uses the system PostgreSQL 15 (neon init --pg-version 15), so that both sides run the same binaries.
//
//   npm run bench:branch [-- --sizes 100,1000] [--runs 3] [--no-bare] [--keep-logs DIR]
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { freePort } from '../lib/net.js';
import { CLI, cleanup, neon, neonJson, tmpDir } from '../testkit/env.js';
import * as lib from './lib-snapshot.js';
import { MB, PlainCluster, bin, median, run, timed } from './lib-snapshot.js';
import { branchToQuery, memAvailableKb, memoryOf, pidsUnder, repoMemory, type Memory, type Metrics } from './lib-branch.js';

const sizes = lib.listArg('sizes', [100, 1000]);
const runs = lib.listArg('runs', [3])[0];
const COMPUTES = 10;
/** --no-bare: skip the branch made before any base image of the data (it replays all of the load's WAL). */
const bare = !process.argv.includes('--no-bare');
/** --keep-logs DIR: copy each neon repository's logs/ there before it is removed. */
const keepLogs = process.argv.includes('--keep-logs') ? process.argv[process.argv.indexOf('--keep-logs') + 1] : undefined;
/** Background images off: the bench decides when an image is taken. */
const QUIET = JSON.stringify({ pageserver: { imageAfterMb: 1_000_000, imageIntervalMinutes: 1_000_000 } });

if (!fs.existsSync(bin('pg_basebackup'))) {
  console.error(`bench:branch needs the system PostgreSQL 15 (${lib.PG_BIN}): apt-get install postgresql-15`);
  process.exit(1);
}
if (!fs.existsSync(CLI)) {
  console.error('bench:branch drives the built CLI: run npm run build first');
  process.exit(1);
}

/** Folders still to clean up, for the error path and Ctrl-C. */
const live = new Set<string>();
process.on('SIGINT', () => {
  console.error('interrupted: stopping everything');
  void Promise.all([...live].map((dir) => cleanup(dir))).finally(() => process.exit(130));
});

const memoryKeys = (prefix: string, m: Memory): Metrics => ({ [`${prefix}N`]: m.count, [`${prefix}Rss`]: m.rss, [`${prefix}Pss`]: m.pss });

/** neon: a fresh repository, pgbench -i, a bare branch, an image, a branch, the same by REST, ten computes. */
async function neonRun(scale: number): Promise<Metrics> {
  const dir = tmpDir('neon-bench-branch-');
  live.add(dir);
  const cwd = { cwd: dir };
  const repo = path.join(dir, '.neon');
  const m: Metrics = {};
  const destroy = (name: string) => neonJson(['pg', 'destroy', '-n', name], cwd);
  try {
    fs.writeFileSync(path.join(dir, 'neon.config.json'), QUIET);
    await neonJson(['init', '--pg-version', '15'], cwd);
    const url: string = (await neonJson(['start'], cwd)).connection_string;
    lib.pgbenchInit(url, scale);
    await lib.query(url, 'checkpoint');
    m.dbBytes = await lib.dbSize(url);
    // Before any image of the data: the branch restores init's image and replays the whole load.
    if (bare) {
      Object.assign(m, await branchToQuery(dir, 'bare', scale, 'bare'));
      await destroy('bare');
    }

    // 1. A base image now, then a branch and its compute until it answers.
    [m.imageMs] = await timed(() => neonJson(['image', 'create'], cwd));
    Object.assign(m, await branchToQuery(dir, 'b1', scale, 'branch'));
    await destroy('b1');
    // The daemon's part: the same request without the CLI around it.
    m.restMs = await lib.restCall(repo, 'PUT', '/pgs', { name: 'b2' });
    await destroy('b2');

    // 4. Ten computes, one after another, each answering a query; then the memory of everything.
    const availableBefore = memAvailableKb();
    const before = repoMemory(repo);
    const names = Array.from({ length: COMPUTES }, (_, i) => `c${i}`);
    const each: number[] = [];
    const t0 = performance.now();
    for (const name of names) {
      const [ms, made] = await timed(() => neonJson(['pg', 'create', '-n', name], cwd));
      each.push(ms);
      await lib.firstQuery(made.connection_string);
    }
    m.manyMs = performance.now() - t0;
    m.manyEachMs = median(each);
    m.manyMaxMs = Math.max(...each);
    const after = repoMemory(repo, names);
    m.memDrop = (availableBefore - memAvailableKb()) * 1024;
    m.computesDisk = lib.duBytes(path.join(repo, 'computes'));
    Object.assign(
      m,
      memoryKeys('pgBefore', before.postgres),
      memoryKeys('pgAll', after.postgres),
      memoryKeys('pgNew', after.these),
      memoryKeys('daemon', after.daemon),
      memoryKeys('sk', after.safekeepers),
      { daemonBeforeRss: before.daemon.rss, skBeforeRss: before.safekeepers.rss },
    );
    [m.destroyMs] = await timed(async () => {
      for (const name of names) await destroy(name);
    });
    await neon(['stop'], cwd);
    return m;
  } finally {
    await lib.finishRun(dir, repo, scale, keepLogs);
    live.delete(dir);
  }
}

/** The peers: a plain PostgreSQL 15 cluster of the same scale; pg_basebackup -D of it running, cp -a of it stopped. */
async function peerRun(scale: number): Promise<Metrics> {
  const dir = tmpDir('neon-bench-branch-pg-');
  live.add(dir);
  const cluster = new PlainCluster(dir, await freePort());
  const m: Metrics = {};
  const copies: string[] = [];
  let started = false;
  try {
    started = true;
    m.dbBytes = (await lib.loadedCluster(cluster, scale)).dbBytes;
    const port2 = await freePort();
    const startAndQuery = async (data: string) => {
      cluster.start(data, `-p ${port2} -c archive_mode=off`);
      await lib.firstQuery(cluster.url(port2));
    };

    // (b) pg_basebackup -D of the running cluster (plain format, WAL streamed, fast checkpoint), started beside it.
    const backup = path.join(dir, 'backup');
    copies.push(backup);
    const connect = ['-h', '127.0.0.1', '-p', String(cluster.port), '-U', 'postgres', '-w', '-c', 'fast', '-X', 'stream'];
    [m.bbCopyMs] = await timed(() => run(bin('pg_basebackup'), ['-D', backup, ...connect], { asPg: true }));
    [m.bbStartMs] = await timed(() => startAndQuery(backup));
    m.bbMs = m.bbCopyMs + m.bbStartMs;
    cluster.stop(backup);
    fs.rmSync(backup, { recursive: true });

    // (a) cp -a of the stopped cluster, started, until it answers; the memory of a fresh plain cluster.
    cluster.stop();
    const copy = path.join(dir, 'copy');
    copies.push(copy);
    [m.cpCopyMs] = await timed(() => run('cp', ['-a', cluster.data, copy]));
    [m.cpStartMs] = await timed(() => startAndQuery(copy));
    m.cpMs = m.cpCopyMs + m.cpStartMs;
    const plain = memoryOf(pidsUnder(copy));
    Object.assign(m, { plainN: plain.count, plainRss: plain.rss, plainPss: plain.pss });
    cluster.stop(copy);
    return m;
  } finally {
    if (started) for (const data of [...copies, cluster.data]) if (fs.existsSync(data)) cluster.stop(data);
    await cleanup(dir);
    live.delete(dir);
  }
}

// ---- report ----

const sec = (ms: number) => (Number.isFinite(ms) ? `${(ms / 1000).toFixed(2)} s` : '–');
const mb = (bytes: number) => (Number.isFinite(bytes) ? `${(bytes / MB).toFixed(0)} MB` : '–');
const x = (ratio: number) => (Number.isFinite(ratio) ? `${ratio.toFixed(2)}×` : '–');
const check = (ratio: number, target: number) => (Number.isFinite(ratio) ? `≤ ${target} ${ratio <= target ? '✓' : '✗'}` : `≤ ${target}`);

function report(size: number, scale: number, neonRuns: Metrics[], peerRuns: Metrics[]): void {
  const n = (key: string) => median(neonRuns.map((r) => r[key]));
  const p = (key: string) => median(peerRuns.map((r) => r[key]));
  console.log(
    `\n## ~${size} MB: pgbench scale ${scale}; pg_database_size ${mb(n('dbBytes'))} (neon), ${mb(p('dbBytes'))} (plain); ` +
      `${runs} run(s), medians\n`,
  );
  console.log('| measure | neon | peer | neon / peer | target |');
  console.log('|---|---:|---:|---:|---|');
  const row = (...cells: string[]) => console.log(`| ${cells.join(' | ')} |`);
  const total = n('branchMs');
  row(
    '1+2. new branch → first query, vs (a) cp -a of the stopped dir + pg_ctl start -w + first query',
    sec(total),
    sec(p('cpMs')),
    x(total / p('cpMs')),
    check(total / p('cpMs'), 1.2),
  );
  row(
    '1+3. new branch → first query, vs (b) pg_basebackup -D of the running primary + pg_ctl start -w + first query',
    sec(total),
    sec(p('bbMs')),
    x(total / p('bbMs')),
    check(total / p('bbMs'), 0.5),
  );
  row(
    '… neon: request → Postgres starts (CLI, fork point, image clone, WAL staging) / peers: cp -a; pg_basebackup',
    sec(n('branchBeforePgMs')),
    `${sec(p('cpCopyMs'))}; ${sec(p('bbCopyMs'))}`,
    '',
    '',
  );
  row(
    '… neon: Postgres starts → ready (startup, replay, promotion, end-of-recovery checkpoint) / peers: pg_ctl start -w + first query',
    sec(n('branchPgMs')),
    `${sec(p('cpStartMs'))}; ${sec(p('bbStartMs'))}`,
    '',
    '',
  );
  row('…… of which Postgres starts → recovery begins (control file, data directory sync)', sec(n('branchStartupMs')), '', '', '');
  row(`…… of which WAL replay (${mb(n('branchRedoBytes'))} redo range from the image on)`, sec(n('branchReplayMs')), '', '', '');
  row('… neon: ready → first answer (password, CLI exit, connect)', sec(n('branchAfterReadyMs')), '', '', '');
  row('1. the daemon part: PUT /pgs alone (no CLI, no first query)', sec(n('restMs')), '', '', '');
  row('the base image taken after the load (neon image create)', sec(n('imageMs')), '', '', '');
  if (bare) {
    const b = n('bareMs');
    row(
      `1'. new branch → first query, no image after the load (${mb(n('bareRedoBytes'))} redo range)`,
      sec(b),
      sec(p('cpMs')),
      x(b / p('cpMs')),
      '(a)',
    );
    row(
      "…  1': request → Postgres starts; WAL replay; Postgres starts → ready",
      `${sec(n('bareBeforePgMs'))}; ${sec(n('bareReplayMs'))}; ${sec(n('barePgMs'))}`,
      '',
      '',
      '',
    );
  }
  const perCompute = (key: string) => (n(`${key}`) - n(key.replace('All', 'Before'))) / COMPUTES;
  console.log(
    `\n${COMPUTES} computes (neon pg create -n c0..c${COMPUTES - 1}, one after another, each answering a query): ` +
      `${sec(n('manyMs'))} in all; per compute median ${sec(n('manyEachMs'))}, slowest ${sec(n('manyMaxMs'))}; ` +
      `destroying them ${sec(n('destroyMs'))}; computes/ on disk ${mb(n('computesDisk'))}`,
  );
  console.log(
    `- Postgres processes of the repository (cwd under computes/; main + ${COMPUTES}): ${n('pgAllN')} processes, ` +
      `RSS ${mb(n('pgAllRss'))} (PSS ${mb(n('pgAllPss'))}); before: ${n('pgBeforeN')}, RSS ${mb(n('pgBeforeRss'))}; ` +
      `the ${COMPUTES} new: RSS ${mb(n('pgNewRss'))} (PSS ${mb(n('pgNewPss'))}), ${mb(perCompute('pgAllRss'))} RSS / ` +
      `${mb(perCompute('pgAllPss'))} PSS more per compute`,
  );
  console.log(
    `- neon daemon: RSS ${mb(n('daemonRss'))} (before ${mb(n('daemonBeforeRss'))}); safekeeper(s): ${n('skN')}, ` +
      `RSS ${mb(n('skRss'))} (before ${mb(n('skBeforeRss'))})`,
  );
  console.log(`- MemAvailable drop over the ${COMPUTES} creations: ${mb(n('memDrop'))}`);
  console.log(
    `- for reference, one plain PostgreSQL 15 just started (cp -a copy): ${p('plainN')} processes, RSS ${mb(p('plainRss'))} (PSS ${mb(p('plainPss'))})`,
  );
}

console.log('# bench:branch — a new branch with a read-write compute vs cp -a and pg_basebackup of a plain cluster');
console.log(lib.machine());
console.log(
  `Load average at the start: ${os
    .loadavg()
    .map((l) => l.toFixed(2))
    .join(', ')} (other work on the machine skews the times).`,
);
console.log(
  'Both sides: the system PostgreSQL 15, shared_buffers 128MB, the first query is `select 1` over TCP with a password. ' +
    'neon: neon.config.json turns background images off; the base image is taken after pgbench -i and a checkpoint. ' +
    'pg_basebackup: -c fast -X stream. The phases come from the compute’s Postgres log (its own time stamps).',
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
