import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import type { Storage } from '../../core/storage.js';
import storageS3 from '../../plugins/storage-s3/index.js';
import { cleanup, neon, neonJson, tmpDir } from '../../testkit/env.js';
import { query } from '../../testkit/pg.js';
import { startS3, type S3Fixture } from '../../testkit/s3.js';
import { waitFor } from '../../testkit/wait.js';

const lsnValue = (text: string) => {
  const [hi, lo] = text.split('/');
  return (BigInt('0x' + hi) << 32n) + BigInt('0x' + lo);
};

function projectIn(parent: string, name: string): string {
  const project = path.join(parent, name);
  fs.mkdirSync(project);
  const port = 20000 + Math.floor(Math.random() * 20000);
  fs.writeFileSync(path.join(project, 'neon.config.json'), JSON.stringify({ postgres: { port } }));
  return project;
}

/** Objects the first generation wrote (plain keys), with size and time: what a stale first writer could change. */
async function firstGeneration(storage: Storage): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for await (const object of storage.list('')) {
    if (/~g\d+$/.test(object.key) || object.key.startsWith('claims/') || object.key.startsWith('chunks/')) continue;
    out.set(object.key, `${object.size}@${object.mtime?.getTime()}`);
  }
  return out;
}

async function offloaded(project: string, env: Record<string, string>, url: string): Promise<void> {
  const [{ lsn }] = await query(url, 'select pg_current_wal_flush_lsn()::text as lsn');
  await waitFor('the offload of the WAL up to the last commit', async () => {
    const partial = (await neonJson(['status'], { cwd: project, env })).offload?.last_partial?.flush_lsn;
    return partial && lsnValue(partial) >= lsnValue(lsn);
  });
}

const writers = suite('one writer per storage_dest (a store without conditional writes)');
let s3: S3Fixture;
let dir = '';
writers.before(async () => {
  s3 = await startS3({ conditionalWrites: false });
  dir = tmpDir();
});
writers.after(async () => {
  await cleanup(dir);
  await s3?.close();
});

writers('a second repository is refused naming the holder; after --take-over the old writer stops and readers see only the new one', async () => {
  const env = s3.env;
  const url = `s3://${s3.bucket}/shared`;
  const a = projectIn(dir, 'a');
  const b = projectIn(dir, 'b');
  await neonJson(['init', `--storage_dest=${url}`], { cwd: a, env });
  const aUrl = (await neonJson(['start'], { cwd: a, env })).connection_string as string;
  await query(aUrl, 'create table t (id int primary key, who text); insert into t select g, $$a$$ from generate_series(1, 1000) g');
  await offloaded(a, env, aUrl);

  const refused = await neon(['start', `--storage_dest=${url}`], { cwd: b, env });
  assert.is.not(refused.code, 0);
  assert.match(refused.stderr, new RegExp(`in use by repository ${path.join(a, '.neon')} on host \\S+ \\(pid \\d+, since `));
  assert.match(refused.stderr, /--take-over/);
  assert.not.ok(fs.existsSync(path.join(b, '.neon')), 'the refused repository made nothing local');

  const taken = await neonJson(['start', `--storage_dest=${url}`, '--take-over'], { cwd: b, env });
  assert.is(taken.restored, true);
  const bUrl = taken.connection_string as string;
  assert.is((await query(bUrl, 'select count(*)::int as n from t'))[0].n, 1000);

  // A goes on committing, but once it sees the newer claim it writes nothing more to the bucket.
  await query(aUrl, 'insert into t select g, $$late$$ from generate_series(1001, 3000) g');
  const status = await waitFor('the old writer to notice the take-over', async () => {
    const now = await neonJson(['status'], { cwd: a, env });
    return /taken over/.test(now.offload?.error ?? '') ? now : undefined;
  });
  assert.match(status.offload.error, new RegExp(`taken over by repository ${path.join(b, '.neon')}`));
  const bucket = (await storageS3(s3.options).resolveStorage!.handler({ scheme: 's3', url, raw: url })) as Storage;
  const before = await firstGeneration(bucket);
  await query(aUrl, 'insert into t select g, $$later$$ from generate_series(3001, 6000) g');
  await sleep(5000); // several partial intervals and heartbeats of A: none of them may write
  const after = await firstGeneration(bucket);
  for (const [key, stamp] of after) assert.is(before.get(key), stamp, `${key} was written by the old writer after the take-over`);

  // What a stale writer could still slip in on such a store (between its last check and its put) is never read:
  // a late head record of generation 1 naming a branch that does not exist would break the next restore.
  await bucket.put('head.json', JSON.stringify({ branch: 'stale' }));
  await query(bUrl, 'insert into t values (-1, $$b$$)');
  await offloaded(b, env, bUrl);
  await cleanup(path.join(a, '.neon'));
  await cleanup(path.join(b, '.neon'));
  const back = await neonJson(['start', `--storage_dest=${url}`], { cwd: b, env });
  assert.is(back.restored, true);
  const rows = await query(back.connection_string, 'select who, count(*)::int as n from t group by who order by who');
  assert.equal(rows, [
    { who: 'a', n: 1000 },
    { who: 'b', n: 1 },
  ]);
  assert.is((await neon(['stop'], { cwd: b, env })).code, 0);
});

writers.run();
