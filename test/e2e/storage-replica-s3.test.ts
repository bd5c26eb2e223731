import fs from 'node:fs';
import path from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { cleanup, neon, neonJson, tmpDir } from '../../testkit/env.js';
import { query } from '../../testkit/pg.js';
import { eventually } from '../../testkit/wait.js';
import { startS3, type S3Fixture } from '../../testkit/s3.js';

/*
 * The replica of another repository over S3 (s3rver, driven by the real SDK): A's storage_dest is a bucket
 * prefix; B attaches it and follows A through the bucket alone.
 */

const test = suite('a replica of another repository through an S3 storage');
let s3: S3Fixture;
let root: string;

const count = async (url: string) => (await query<{ n: number }>(url, 'select count(*)::int as n from t'))[0].n;

test.before(async () => {
  s3 = await startS3();
  root = tmpDir('neon-storage-replica-s3-');
});

test.after(async () => {
  await cleanup(root);
  await s3?.close();
});

test("B's replica follows A through the bucket, sees A's new rows and refuses writes", async () => {
  const env = { ...s3.env, NEON_PORT: '0' };
  const url = `s3://${s3.bucket}/team/a`;
  const [a, b] = ['a', 'b'].map((name) => path.join(root, name));
  for (const dir of [a, b]) fs.mkdirSync(dir, { mode: 0o755 });
  const primary = (await neonJson(['start', `--storage_dest=${url}`], { cwd: a, env })).connection_string;
  await query(primary, 'create table t as select g as id from generate_series(1, 1000) g');
  await neonJson(['snapshot', 'create', 'first'], { cwd: a, env });
  await neonJson(['start'], { cwd: b, env });
  await neonJson(['storage', 'attach', '-n', 'a', '--type', 's3', '--path', url], { cwd: b, env });
  // A's background sync pushes the snapshot and an image; until then the storage has no snapshot to start from.
  const standby = await eventually(
    'a standby over the bucket',
    () => neonJson(['pg', 'create', '-n', 'r', '-s', 'a', '--replica'], { cwd: b, env }),
    (info) => info.replica === true,
  );
  assert.is(await count(standby.connection_string), 1000);
  await query(primary, 'insert into t select g from generate_series(1001, 1300) g');
  await eventually("A's new rows on B's replica", () => count(standby.connection_string), (n) => n === 1300);
  const refused = await query(standby.connection_string, 'insert into t values (0)').then(
    () => 'accepted',
    (error: Error) => error.message,
  );
  assert.match(refused, /read-only transaction/);
  // Promoting it would make a primary of another database system, whose WAL this repository cannot keep: refused.
  const promote = await neon(['pg', 'promote', '-n', 'r'], { cwd: b, env });
  assert.is.not(promote.code, 0);
  assert.match(promote.stderr.trim(), /^.*follows another repository through its storage and cannot become a primary here.*neon clone/);
  assert.is(await count(standby.connection_string), 1300, 'still a working replica');
});

test.run();
