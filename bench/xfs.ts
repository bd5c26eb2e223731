// bench/xfs: new computes and checkouts on ext4 (the temp disk) and on XFS with reflink (a loop-mounted image made
// here), each beside its peer measured in the same run. Needs root (mount); installs xfsprogs when mkfs.xfs is
// missing. For each file system and pgbench scale (8 ≈ 100 MB, 64 ≈ 1 GB), a fresh neon repository and a plain cluster:
//   1. neon image create, then neon pg create -n b1 (the first compute after the image) → first query, and a second
//      one → first query; WAL the compute wrote (its pg_wal);   peer: cp -a (XFS: cp --reflink=always -a) of the
//      stopped cluster + pg_ctl start -w + first query, and the same with the copy made durable (sync -f) first
//   2. snapshot A, 1% of the rows changed, an image; neon checkout A → first query; neon checkout back (the state left)
//      → first query; checkout A again → first query;   peer: pg_ctl stop + cp -a (reflink) of a saved copy +
//      pg_ctl start -w + first query
// The image and its loop mount are removed afterwards, also on failure and Ctrl-C.
//
//   node --import tsx bench/xfs.ts [--scales 8,64] [--runs 3] [--fs ext4,xfs]
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { freePort } from '../lib/net.js';
import { CLI, cleanup, neon, neonJson, tmpDir } from '../testkit/env.js';
import * as lib from './lib-snapshot.js';
import { MB, PlainCluster, median, run, timed } from './lib-snapshot.js';
import { branchToQuery, type Metrics } from './lib-branch.js';

/** pgbench scales: 8 ≈ 100 MB, 64 ≈ 1 GB (the sizes). */
const scales = lib.listArg('scales', [8, 64]);
const runs = lib.listArg('runs', [3])[0];
const fsArg = process.argv.indexOf('--fs');
const systems = (fsArg >= 0 ? process.argv[fsArg + 1] : 'ext4,xfs').split(',') as ('ext4' | 'xfs')[];

if (process.getuid?.() !== 0) {
  console.error('bench/xfs.ts mounts an XFS image: run it as root');
  process.exit(1);
}
if (!fs.existsSync(CLI)) {
  console.error('bench/xfs.ts drives the built CLI: run npm run build first');
  process.exit(1);
}

/** Cleanups still due (the mount, the image, run folders), for errors and Ctrl-C. */
const undo: (() => Promise<void> | void)[] = [];
async function undoAll(): Promise<void> {
  while (undo.length) await Promise.resolve(undo.pop()!()).catch((error) => console.error(`cleanup: ${(error as Error).message}`));
}
process.on('SIGINT', () => {
  console.error('interrupted: cleaning up');
  void undoAll().finally(() => process.exit(130));
});

function sh(command: string, args: string[]): void {
  const result = spawnSync(command, args, { encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`${command} ${args.join(' ')}: ${result.stderr || result.stdout || result.error}`);
}

/** A loop-mounted XFS file system with reflink, made for this run; undone by the returned function. */
function mountXfs(): { mount: string; release: () => void } {
  if (spawnSync('mkfs.xfs', ['-V']).status !== 0) {
    console.error('mkfs.xfs missing: apt-get install -y xfsprogs');
    if (spawnSync('apt-get', ['install', '-y', 'xfsprogs'], { stdio: 'ignore' }).status !== 0) {
      spawnSync('apt-get', ['update'], { stdio: 'ignore' });
      sh('apt-get', ['install', '-y', 'xfsprogs']);
    }
  }
  const image = `/var/tmp/neon-bench-xfs-${process.pid}.img`;
  const mount = `/mnt/neon-bench-xfs-${process.pid}`;
  let mounted = false;
  const release = () => {
    if (mounted) {
      const gone = spawnSync('umount', [mount]).status === 0 || spawnSync('umount', ['-l', mount]).status === 0;
      if (!gone) console.error(`could not unmount ${mount}`);
      mounted = false;
    }
    fs.rmSync(mount, { recursive: true, force: true });
    fs.rmSync(image, { force: true });
  };
  try {
    fs.writeFileSync(image, '');
    fs.truncateSync(image, 24 * 1024 ** 3); // sparse: only what is written takes space
    sh('mkfs.xfs', ['-q', '-f', '-m', 'reflink=1', image]);
    fs.mkdirSync(mount, { recursive: true });
    sh('mount', ['-o', 'loop', image, mount]);
    mounted = true;
    fs.chmodSync(mount, 0o755); // the postgres user must reach the folders made in it
    return { mount, release };
  } catch (error) {
    release();
    throw error;
  }
}

const countBranches = async (url: string) => Number((await lib.query(url, 'select count(*)::int as n from pgbench_branches'))[0].n);

/**
 * `neon checkout TARGET` until the main compute answers (timed); then checks it holds that point's data: all
 * pgbench_branches rows, and the sum of abalance (0 at A, before the 1% change; scale × 1000 after it).
 */
async function checkoutToQuery(dir: string, target: string, scale: number, balance: number): Promise<[number, { left: string }]> {
  const [ms, [out, url]] = await timed(async () => {
    const out = await neonJson(['checkout', target], { cwd: dir });
    const url: string = (await neonJson(['pg', 'show', '-n', 'main'], { cwd: dir })).connection_string;
    await lib.firstQuery(url);
    return [out, url] as const;
  });
  if ((await countBranches(url)) !== scale) throw new Error(`after checkout ${target}: not ${scale} pgbench_branches rows`);
  const [{ sum }] = await lib.query(url, 'select coalesce(sum(abalance), 0)::bigint::text as sum from pgbench_accounts');
  if (Number(sum) !== balance) throw new Error(`after checkout ${target}: sum(abalance) is ${sum}, not ${balance}`);
  return [ms, out];
}

/** neon in `base`: a loaded repository, an image, two computes, then checkouts back and forth. */
async function neonRun(base: string, scale: number): Promise<Metrics> {
  process.env.TMPDIR = base;
  const dir = tmpDir('neon-bench-xfs-');
  undo.push(() => cleanup(dir));
  const cwd = { cwd: dir };
  const m: Metrics = { load: os.loadavg()[0] };
  try {
    const { url } = await lib.loadedNeon(dir, scale);
    [m.imageMs] = await timed(() => neonJson(['image', 'create'], cwd));
    Object.assign(m, await branchToQuery(dir, 'b1', scale, 'first'));
    Object.assign(m, await branchToQuery(dir, 'b2', scale, 'second'));
    m.walBytes = lib.duBytes(path.join(dir, '.neon', 'computes', 'b2', 'pgdata', 'pg_wal'));
    for (const name of ['b1', 'b2']) await neonJson(['pg', 'destroy', '-n', name], cwd);

    await neonJson(['snapshot', 'create', 'A'], cwd);
    await lib.changeOnePercent(url, scale);
    await neonJson(['image', 'create'], cwd);
    const changed = scale * 1000; // changeOnePercent adds 1 to that many rows
    const [toA, out] = await checkoutToQuery(dir, 'A', scale, 0);
    const [back, home] = await checkoutToQuery(dir, out.left, scale, changed);
    const [again, third] = await checkoutToQuery(dir, 'A', scale, 0);
    // home.left is the branch made at A; third.left is main's state, left again: back to it once more.
    Object.assign(m, { toA, back, again, backAgain: (await checkoutToQuery(dir, third.left, scale, changed))[0] });
    if (!home.left) throw new Error('the checkout back left no snapshot');
    await neon(['stop'], cwd);
    return m;
  } finally {
    await cleanup(dir);
    undo.pop();
  }
}

/** The peer in `base`: a plain cluster; cp (with reflink on XFS) + start for a compute, stop + cp + start for a checkout. */
async function peerRun(base: string, scale: number, reflink: boolean): Promise<Metrics> {
  process.env.TMPDIR = base;
  const dir = tmpDir('neon-bench-xfs-pg-');
  const cluster = new PlainCluster(dir, await freePort());
  const copies: string[] = [];
  undo.push(async () => {
    for (const data of [...copies, cluster.data]) if (fs.existsSync(data)) cluster.stop(data);
    await cleanup(dir);
  });
  const m: Metrics = { load: os.loadavg()[0] };
  const cp = (from: string, to: string) => run('cp', [...(reflink ? ['--reflink=always'] : []), '-a', from, to]);
  try {
    await lib.loadedCluster(cluster, scale);
    const port2 = await freePort();
    cluster.stop();
    // A compute: a copy of the stopped cluster, started beside it, until it answers.
    const copy = path.join(dir, 'copy');
    copies.push(copy);
    [m.cpMs] = await timed(async () => {
      cp(cluster.data, copy);
      cluster.start(copy, `-p ${port2} -c archive_mode=off`);
      await lib.firstQuery(cluster.url(port2));
    });
    cluster.stop(copy);
    fs.rmSync(copy, { recursive: true });
    // The same made crash-safe before it starts, as a neon compute is: Postgres syncs a restored data directory
    // before its recovery (recovery_init_sync_method = syncfs); a copy of a cleanly stopped cluster skips that.
    const durable = path.join(dir, 'durable');
    copies.push(durable);
    [m.cpSyncMs] = await timed(async () => {
      cp(cluster.data, durable);
      run('sync', ['-f', durable]);
      cluster.start(durable, `-p ${port2} -c archive_mode=off`);
      await lib.firstQuery(cluster.url(port2));
    });
    cluster.stop(durable);
    fs.rmSync(durable, { recursive: true });
    // A checkout: the running cluster stops, a saved copy is copied into place and started.
    const saved = path.join(dir, 'saved');
    cp(cluster.data, saved);
    cluster.start();
    const next = path.join(dir, 'next');
    copies.push(next);
    [m.checkoutMs] = await timed(async () => {
      cluster.stop();
      cp(saved, next);
      cluster.start(next, `-p ${port2} -c archive_mode=off`);
      await lib.firstQuery(cluster.url(port2));
    });
    if ((await countBranches(cluster.url(port2))) !== scale) throw new Error('the peer copy lacks rows');
    cluster.stop(next);
    return m;
  } finally {
    for (const data of [...copies, cluster.data]) if (fs.existsSync(data)) cluster.stop(data);
    await cleanup(dir);
    undo.pop();
  }
}

const sec = (ms: number) => (Number.isFinite(ms) ? `${(ms / 1000).toFixed(2)} s` : '–');
const x = (ratio: number) => (Number.isFinite(ratio) ? `${ratio.toFixed(2)}×` : '–');

function report(system: string, size: number, scale: number, neonRuns: Metrics[], peerRuns: Metrics[]): void {
  const n = (key: string) => median(neonRuns.map((r) => r[key]));
  const p = (key: string) => median(peerRuns.map((r) => r[key]));
  const ratio = (key: string, peer: string) => median(neonRuns.map((r, i) => r[key] / (peerRuns[i] ?? peerRuns[0])[peer]));
  const cp = system === 'xfs' ? 'cp --reflink=always -a' : 'cp -a';
  const loads = [...neonRuns, ...peerRuns].map((r) => r.load.toFixed(1)).join(', ');
  console.log(`\n## ${system}, ~${size} MB (pgbench scale ${scale}): ${neonRuns.length} run(s), medians; load average 1 min at the runs: ${loads}\n`);
  console.log('| measure | neon | peer | neon / peer (median of per-run ratios) |');
  console.log('|---|---:|---:|---:|');
  const row = (what: string, key: string, peer: string, peerText: string) =>
    console.log(`| ${what} | ${sec(n(key))} | ${sec(p(peer))} ${peerText} | ${x(ratio(key, peer))} |`);
  row('first compute after an image → first query', 'firstMs', 'cpMs', `(${cp} + pg_ctl start)`);
  row('… against the copy made durable first', 'firstMs', 'cpSyncMs', `(${cp} + sync -f + pg_ctl start)`);
  row('… request → Postgres starts (clone/copy, WAL staging)', 'firstBeforePgMs', 'cpMs', '');
  row('second compute → first query', 'secondMs', 'cpMs', `(${cp} + pg_ctl start)`);
  row('checkout of an older snapshot → first query', 'toA', 'checkoutMs', `(stop + ${cp} of a saved copy + start)`);
  row('checkout back to the state left → first query', 'back', 'checkoutMs', '');
  row('checkout of the older snapshot again → first query', 'again', 'checkoutMs', '');
  row('checkout back again → first query', 'backAgain', 'checkoutMs', '');
  console.log(`\npg_wal of a new compute after its first query: ${(n('walBytes') / MB).toFixed(0)} MB; image create ${sec(n('imageMs'))}`);
}

console.log('# bench:xfs — new computes and checkouts, ext4 vs XFS with reflink, each beside cp/pg_ctl in the same run');
console.log(lib.machine());
try {
  const bases: Record<string, string> = { ext4: os.tmpdir() };
  if (systems.includes('xfs')) {
    const { mount, release } = mountXfs();
    undo.push(release);
    bases.xfs = mount;
    console.log(`XFS: a ${24} GiB sparse image, mkfs.xfs -m reflink=1, loop-mounted on ${mount}`);
  }
  for (const scale of scales) {
    const size = Math.round(scale * 15.6);
    for (const system of systems) {
      const neonRuns: Metrics[] = [];
      const peerRuns: Metrics[] = [];
      for (let i = 0; i < runs; i++) {
        for (const side of i % 2 ? (['neon', 'peer'] as const) : (['peer', 'neon'] as const)) {
          process.stderr.write(`${system} ~${size} MB, run ${i + 1}/${runs}: ${side}… `);
          const [ms, metrics] = await timed(() =>
            side === 'neon' ? neonRun(bases[system], scale) : peerRun(bases[system], scale, system === 'xfs'),
          );
          (side === 'neon' ? neonRuns : peerRuns).push(metrics);
          process.stderr.write(`${sec(ms)}\n`);
        }
      }
      report(system, size, scale, neonRuns, peerRuns);
    }
  }
} finally {
  await undoAll();
}
