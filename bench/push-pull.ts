// Push and pull of a pgbench snapshot to s3rver on loopback against a plain lib-storage Upload / a plain GetObject
// streamed to a file of the same objects with the same SDK (ratio in one run, median of --runs, default 3); the
// incremental push after a 1 % change (bytes moved ÷ raw changed pages); the daemon's peak RSS during the transfers.
//   npm run bench:push-pull -- --scale 64        (about 1 GB; the default scale 8 is about 130 MB)
//   --runs N                                      (timed runs of each side)
//   NEON_BENCH_PROFILE=/dir                       (a CPU profile of the daemon per push and pull, see cpu-profile.cjs)
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { pipeline } from 'node:stream/promises';
import os from 'node:os';
import { GetObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { cleanup, neonJson, tmpDir } from '../testkit/env.js';
import { query } from '../testkit/pg.js';
import { startS3 } from '../testkit/s3.js';
import { waitFor } from '../testkit/wait.js';
import { listArg, profileEnv, profiled } from './lib-snapshot.js';

const MB = 1024 * 1024;
const scale = listArg('scale', [8])[0];
const runs = listArg('runs', [3])[0];
const root = tmpDir('neon-bench-pushpull-');
const s3 = await startS3();
const env: Record<string, string> = {
  ...s3.env,
  NEON_PORT: '0',
  ...(process.env.NEON_TRACE ? { NEON_TRACE: process.env.NEON_TRACE } : {}),
  ...profileEnv(),
};
const load = () => `load ${os.loadavg()[0].toFixed(1)}`;
const client = new S3Client({
  ...s3.options,
  credentials: { accessKeyId: s3.options.accessKeyId, secretAccessKey: s3.options.secretAccessKey },
});
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** Peak resident memory of a process while `work` runs, sampled every 50 ms. */
async function peakRss<T>(pid: number, work: () => Promise<T>): Promise<{ value: T; peak: number }> {
  let peak = 0;
  const sample = () => {
    const match = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    if (match) peak = Math.max(peak, Number(match[1]) * 1024);
  };
  const timer = setInterval(sample, 50);
  try {
    return { value: await work(), peak };
  } finally {
    clearInterval(timer);
    sample();
  }
}

async function timed<T>(work: () => Promise<T>): Promise<{ value: T; seconds: number }> {
  const start = performance.now();
  const value = await work();
  return { value, seconds: (performance.now() - start) / 1000 };
}

/** The objects of a prefix as s3rver stores them on disk (key → file). */
function objectFiles(prefix: string): Map<string, string> {
  const files = new Map<string, string>();
  const walk = (dir: string) => {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) walk(full);
      else if (entry.name.endsWith('._S3rver_object'))
        files.set(path.relative(path.join(s3.directory, s3.bucket), full).replace(/\._S3rver_object$/, ''), full);
    }
  };
  walk(path.join(s3.directory, s3.bucket, prefix));
  return files;
}

// The plugin's defaults, so that both sides send the same requests: 8 MiB parts, 4 in flight per object.
const PART_SIZE = 8 * MB;
const QUEUE_SIZE = 4;

/** A plain lib-storage Upload of each file (streamed from disk), 4 objects at a time, as an SDK user would write it. */
async function plainUpload(files: Map<string, string>, prefix: string): Promise<void> {
  const queue = [...files];
  await Promise.all(
    Array.from({ length: 4 }, async () => {
      for (let next = queue.shift(); next; next = queue.shift()) {
        const [key, file] = next;
        const params = { Bucket: s3.bucket, Key: `${prefix}/${key}`, Body: fs.createReadStream(file) };
        await new Upload({ client, params, partSize: PART_SIZE, queueSize: QUEUE_SIZE }).done();
      }
    }),
  );
}

/** A plain GetObject of each object streamed to a file, 4 at a time. */
async function plainDownload(keys: string[], into: string): Promise<void> {
  const queue = [...keys];
  await Promise.all(
    Array.from({ length: 4 }, async () => {
      for (let key = queue.shift(); key; key = queue.shift()) {
        const { Body } = await client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: key }));
        await pipeline(Body as NodeJS.ReadableStream, fs.createWriteStream(path.join(into, key.replace(/\//g, '_'))));
      }
    }),
  );
}

try {
  const a = path.join(root, 'a');
  fs.mkdirSync(a, { mode: 0o755 });
  const started = await neonJson(['start'], { cwd: a, env });
  execFileSync('/usr/lib/postgresql/15/bin/pgbench', ['-i', '-q', '-s', String(scale), started.connection_string], { stdio: 'ignore' });
  // A base image of the loaded database, so that the snapshot is pushed as packs (not as the WAL of the load).
  await neonJson(['image', 'create'], { cwd: a, env });
  await neonJson(['snapshot', 'create', 's1'], { cwd: a, env });
  const daemonA = (await neonJson(['status'], { cwd: a, env })).daemon.pid as number;
  const idleRss = Number(/VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${daemonA}/status`, 'utf8'))![1]) * 1024;
  const pushes: number[] = [];
  const uploads: number[] = [];
  const loads: string[] = [];
  let pushPeak = 0;
  let pullPeak = 0;
  let firstBytes = 0;
  for (let i = 1; i <= runs; i++) {
    const push = await peakRss(daemonA, () =>
      profiled(daemonA, () => timed(() => neonJson(['snapshot', 'push', 's1', '--to', `s3://${s3.bucket}/run${i}`], { cwd: a, env }))),
    );
    pushPeak = Math.max(pushPeak, push.peak);
    pushes.push(push.value.seconds);
    firstBytes = push.value.value.result.bytes;
    uploads.push((await timed(() => plainUpload(objectFiles(`run${i}`), `plain${i}`))).seconds);
    loads.push(load());
    console.log(`push run ${i}: ours ${pushes.at(-1)!.toFixed(2)} s, plain ${uploads.at(-1)!.toFixed(2)} s (${loads.at(-1)})`);
  }
  const pulls: number[] = [];
  const downloads: number[] = [];
  const keys = [...objectFiles('run1').keys()];
  for (let i = 1; i <= runs; i++) {
    const b = path.join(root, `b${i}`);
    fs.mkdirSync(b, { mode: 0o755 });
    await neonJson(['start'], { cwd: b, env });
    // A new repository images its own database in the background: let that finish, so that the pull is timed alone.
    await waitFor(
      'the first image of the pulling repository',
      async () => (await neonJson(['image', 'list'], { cwd: b, env })).length > 0,
      120_000,
    );
    const daemonB = (await neonJson(['status'], { cwd: b, env })).daemon.pid as number;
    const pull = await peakRss(daemonB, () =>
      profiled(daemonB, () => timed(() => neonJson(['snapshot', 'pull', 's1', '--from', `s3://${s3.bucket}/run1`], { cwd: b, env }))),
    );
    pullPeak = Math.max(pullPeak, pull.peak);
    pulls.push(pull.value.seconds);
    await neonJson(['stop'], { cwd: b, env });
    const into = path.join(root, `plain-download-${i}`);
    fs.mkdirSync(into);
    downloads.push((await timed(() => plainDownload(keys, into))).seconds);
    fs.rmSync(into, { recursive: true });
    loads.push(load());
    console.log(`pull run ${i}: ours ${pulls.at(-1)!.toFixed(2)} s, plain ${downloads.at(-1)!.toFixed(2)} s (${loads.at(-1)})`);
  }

  // 1 % of pgbench_accounts' pages, contiguous; the pages changed are the old ones and those the new versions went to.
  const accounts = 100_000 * scale;
  const changed = Math.floor(accounts / 100);
  const pagesOf = `select count(distinct (ctid::text::point)[0])::int as n from pgbench_accounts where aid <= ${changed}`;
  const [before] = await query(started.connection_string, pagesOf);
  await query(started.connection_string, `update pgbench_accounts set abalance = abalance + 1 where aid <= ${changed}`);
  const [after] = await query(started.connection_string, pagesOf);
  const rawChanged = (before.n + after.n) * 8192;
  // As a user would: a snapshot right after the change (reached by WAL from the last image) ...
  await neonJson(['snapshot', 'create', 's2'], { cwd: a, env });
  const incremental = await neonJson(['snapshot', 'push', 's2', '--to', `s3://${s3.bucket}/run1`], { cwd: a, env });
  // ... and one after an image of the changed database (its new chunks are the changed pages).
  await neonJson(['image', 'create'], { cwd: a, env });
  await neonJson(['snapshot', 'create', 's3'], { cwd: a, env });
  const imaged = await neonJson(['snapshot', 'push', 's3', '--to', `s3://${s3.bucket}/run1`], { cwd: a, env });
  const incrementalLoad = load();

  const n = `median of ${runs}`;
  const ratio = (ours: number[], plain: number[]) => (median(plain) / median(ours)).toFixed(2);
  const mb = (bytes: number) => `${(bytes / MB).toFixed(2)} MB`;
  console.log(`pgbench scale ${scale}: first push ${mb(firstBytes)}; load averages after each run: ${loads.join(', ')}`);
  console.log(
    `push: ${median(pushes).toFixed(2)} s (${n}) vs plain lib-storage Upload ${median(uploads).toFixed(2)} s: ratio ${ratio(pushes, uploads)}`,
  );
  console.log(
    `pull: ${median(pulls).toFixed(2)} s (${n}) vs plain GetObject to file ${median(downloads).toFixed(2)} s: ratio ${ratio(pulls, downloads)}`,
  );
  console.log(
    `incremental push after 1 % change (${before.n}+${after.n} pages, ${mb(rawChanged)} raw): ` +
      `by WAL ${mb(incremental.result.bytes)} (ratio ${(incremental.result.bytes / rawChanged).toFixed(2)}), ` +
      `after an image ${mb(imaged.result.bytes)} (ratio ${(imaged.result.bytes / rawChanged).toFixed(2)}) (${incrementalLoad})`,
  );
  console.log(
    `daemon peak RSS: push ${(pushPeak / MB).toFixed(0)} MB, pull ${(pullPeak / MB).toFixed(0)} MB (pusher's daemon before: ${(idleRss / MB).toFixed(0)} MB)`,
  );
} finally {
  await cleanup(root);
  client.destroy();
  await s3.close();
}
