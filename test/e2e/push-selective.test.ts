import fs from 'node:fs';
import path from 'node:path';
import { ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { cleanup, neonJson, tmpDir } from '../../testkit/env.js';
import { query } from '../../testkit/pg.js';
import { startS3, type S3Fixture } from '../../testkit/s3.js';

/*
 * A push sends what the pushed snapshot needs, not everything the repository holds: with two local snapshots,
 * pushing the older one leaves the newer one's data at home (a user pushing last week's state does not upload
 * this week's tables), and pushing the newer one afterwards sends that data then.
 */

interface Ctx {
  s3: S3Fixture;
  client: S3Client;
  root: string;
  dir: string;
  env: Record<string, string>;
}

const ctx = {} as Ctx;
const test = suite<Ctx>('snapshot push sends only what the pushed snapshot references', ctx);

const MB = 1024 * 1024;
// ~100 bytes of hex text per row: 120k rows are about 14 MB of pages, several MB once compressed.
const fill = (table: string, salt: number) =>
  `create table ${table} as select g as id, md5((g * ${salt})::text) || md5((g + ${salt})::text) || md5(g::text) as v from generate_series(1, 120000) g`;

/** Bytes and number of the chunk-pack objects under `prefix` in the bucket. */
async function packs(c: Ctx, prefix: string): Promise<{ bytes: number; count: number }> {
  let bytes = 0;
  let count = 0;
  let token: string | undefined;
  do {
    const page = await c.client.send(
      new ListObjectsV2Command({ Bucket: c.s3.bucket, Prefix: `${prefix}/chunks/`, ContinuationToken: token }),
    );
    for (const object of page.Contents ?? []) {
      if (!object.Key!.endsWith('.pack')) continue;
      bytes += object.Size ?? 0;
      count++;
    }
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token);
  return { bytes, count };
}

test.before(async (c) => {
  c.s3 = await startS3();
  c.client = new S3Client({
    ...c.s3.options,
    credentials: { accessKeyId: c.s3.options.accessKeyId, secretAccessKey: c.s3.options.secretAccessKey },
  });
  c.root = tmpDir('neon-push-selective-');
  c.dir = path.join(c.root, 'repo');
  c.env = { ...c.s3.env, NEON_PORT: '0' };
  fs.mkdirSync(c.dir, { mode: 0o755 });
});

test.after(async (c) => {
  await cleanup(c.root);
  c.client?.destroy();
  await c.s3?.close();
});

test("pushing the older of two snapshots uploads none of the newer one's data; pushing the newer one then does", async (c) => {
  const started = await neonJson(['start'], { cwd: c.dir, env: c.env });
  await query(started.connection_string, fill('old_rows', 7));
  await neonJson(['image', 'create'], { cwd: c.dir, env: c.env });
  await neonJson(['snapshot', 'create', 'older'], { cwd: c.dir, env: c.env });
  await query(started.connection_string, fill('new_rows', 13));
  await neonJson(['image', 'create'], { cwd: c.dir, env: c.env });
  await neonJson(['snapshot', 'create', 'newer'], { cwd: c.dir, env: c.env });

  const url = `s3://${c.s3.bucket}/shared`;
  const first = await neonJson(['snapshot', 'push', 'older', '--to', url], { cwd: c.dir, env: c.env });
  assert.is(first.state, 'succeeded');
  const afterOlder = await packs(c, 'shared');
  assert.ok(afterOlder.bytes > 2 * MB, `the older snapshot's rows were pushed (${afterOlder.bytes} bytes of packs)`);

  const second = await neonJson(['snapshot', 'push', 'newer', '--to', url], { cwd: c.dir, env: c.env });
  const afterNewer = await packs(c, 'shared');
  const added = afterNewer.bytes - afterOlder.bytes;
  // The newer table is about as big as the older one: its packs must travel now, not with the first push.
  assert.ok(afterNewer.count > afterOlder.count, `new packs arrived with the newer snapshot (${afterOlder.count} → ${afterNewer.count})`);
  assert.ok(
    added > afterOlder.bytes / 2,
    `the newer snapshot's push added ${added} bytes of packs; the older one's left ${afterOlder.bytes}`,
  );
  assert.ok(second.result.bytes >= added, `the second push reports the ${added} bytes it moved (${second.result.bytes})`);

  // Both snapshots are whole on the remote: a second repository reads each one's rows.
  const other = path.join(c.root, 'other');
  const cloned = await neonJson(['clone', url, other, '--snapshot', 'older'], { cwd: c.root, env: c.env });
  const [row] = await query(cloned.connection_string, "select count(*)::int as n, to_regclass('new_rows') is null as absent from old_rows");
  assert.equal(row, { n: 120000, absent: true });
  await neonJson(['snapshot', 'pull', 'newer', '--from', 'origin'], { cwd: other, env: c.env });
  const pg = await neonJson(['pg', 'create', '-n', 'at-newer', '-s', 'origin', '--at', 'newer'], { cwd: other, env: c.env });
  const [rows] = await query(pg.connection_string, 'select (select count(*) from new_rows)::int as n');
  assert.is(rows.n, 120000);
});

test.run();
