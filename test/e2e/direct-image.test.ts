// A full image of a running primary read straight from its data directory (pg_backup_start / pg_backup_stop,
// take-image.ts takeDirectImage) holds the files BASE_BACKUP would send, and restores to a server that has every
// committed row once it has replayed the WAL of the backup; unlogged tables come back empty, as Postgres resets them.
import fs from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { ChunkStore } from '../../chunkstore/index.js';
import { parseLsn } from '../../core/wal.js';
import type { ImageManifest } from '../../pageserver/manifest.js';
import { restoreImage } from '../../pageserver/restore.js';
import { takeDirectImage, takeOnlineImage, type NewImage } from '../../pageserver/take-image.js';
import { chownTo, pgUserFor } from '../../postgres/user.js';
import { testCluster } from '../../testkit/cluster.js';
import { cleanup, tmpDir } from '../../testkit/env.js';

const pgUser = pgUserFor();
const direct = suite('a full image read from the data directory of a running primary');
let dir = '';
direct.after(async () => {
  if (dir) await cleanup(dir);
});

/** The entries of an image: path → type (the backup_label is compared apart: its LSNs and time differ). */
const entriesOf = (image: NewImage) => new Map(image.files.filter((f) => f.path !== 'backup_label').map((f) => [f.path, f.type]));

direct('holds what BASE_BACKUP sends, and restores every committed row while writes went on', async () => {
  dir = tmpDir('neon-direct-image-');
  const cluster = await testCluster(dir, pgUser, ['--data-checksums']);
  if (!cluster) return console.log('  (embedded Postgres not installed: skipped)');
  const { data, socket, port } = cluster;
  // The server keeps its WAL, for the restore below.
  const settings = '-c wal_keep_size=1GB';
  await cluster.start({ settings });
  const client = new pg.Client({ host: socket, port, user: 'postgres', database: 'postgres' });
  await client.connect();
  const writer = new pg.Client({ host: socket, port, user: 'postgres', database: 'postgres' });
  await writer.connect();
  let committed = 0;
  try {
    await client.query("create table kept (id int primary key, body text); insert into kept select g, repeat('x', 200) from generate_series(1, 50000) g");
    await client.query('create unlogged table scratch (id int); insert into scratch select generate_series(1, 1000)');
    // A temporary table of an open session: its files are in base/ as t<backend>_<node> while the image is read.
    await client.query('create temp table mine (id int); insert into mine select generate_series(1, 1000)');
    await client.query('checkpoint');

    const store = await ChunkStore.open(path.join(dir, 'store'));
    const primary = { host: socket, port, user: 'postgres' };
    const source = { store, branch: 'main', pgVersion: 17, primary };
    const viaWire = await takeOnlineImage(source);
    // Rows committed while the files are read: the ones committed before pg_backup_stop must all come back.
    let writing = true;
    const writes = (async () => {
      while (writing) {
        await writer.query('insert into kept values ($1, $2)', [100000 + committed, 'during']);
        committed++;
      }
    })();
    const image = await takeDirectImage({ ...source, dataDir: data });
    writing = false;
    await writes;
    assert.ok(committed > 0, 'rows were written while the files were read');

    const ours = entriesOf(image);
    const theirs = entriesOf(viaWire);
    const differ = [...new Set([...ours.keys(), ...theirs.keys()])].filter((p) => ours.get(p) !== theirs.get(p));
    assert.equal(differ.map((p) => `${p}: ${ours.get(p)} / ${theirs.get(p)}`), [], 'the same folders, files and links as BASE_BACKUP');
    assert.ok(ours.size > 100, 'a whole data directory');
    const paths = image.files.map((f) => f.path);
    assert.ok(paths.includes('backup_label'), 'the backup_label of pg_backup_stop');
    assert.not.ok(paths.some((p) => /\/t\d+_\d+/.test(p)), 'no temporary relation');
    const [{ node }] = (await client.query(`select relfilenode::text as node from pg_class where relname = 'scratch'`)).rows;
    assert.ok(paths.some((p) => p.endsWith(`/${node}_init`)), "the unlogged table's init fork");
    assert.not.ok(paths.some((p) => p.endsWith(`/${node}`)), 'not its data');
    assert.not.ok(image.files.some((f) => f.type === 'file' && f.path.startsWith('pg_wal/')), 'no WAL segment');
    assert.ok(parseLsn(image.startLsn) < parseLsn(image.endLsn), `starts at ${image.startLsn}, consistent at ${image.endLsn}`);

    // Restore it, give it the WAL the server kept (wal_keep_size), start it: it replays from the backup's start.
    await client.end();
    await writer.end();
    await cluster.stop();
    const restored = path.join(dir, 'restored');
    await restoreImage(store, { ...image, checksum: '' } as ImageManifest, restored, { owner: pgUser });
    for (const segment of fs.readdirSync(path.join(data, 'pg_wal')).filter((name) => /^[0-9A-F]{24}$/.test(name))) {
      fs.copyFileSync(path.join(data, 'pg_wal', segment), path.join(restored, 'pg_wal', segment));
    }
    await chownTo(pgUser, restored, true);
    fs.chmodSync(restored, 0o700);
    await cluster.start({ dataDir: restored, log: 'restored.log', settings }).catch((error: Error) => {
      throw new Error(`${error.message}\n${fs.readFileSync(path.join(dir, 'restored.log'), 'utf8')}`);
    });
    const check = new pg.Client({ host: socket, port, user: 'postgres', database: 'postgres' });
    await check.connect();
    try {
      const [{ n }] = (await check.query('select count(*)::int as n from kept where id <= 50000')).rows;
      assert.is(n, 50000, 'the rows of before the image');
      // Pages read while they were written are put right by the WAL replayed from the backup's start.
      const [{ during }] = (await check.query(`select count(*)::int as during from kept where body = 'during'`)).rows;
      assert.is(during, committed, 'every row committed while the image was read (its WAL is replayed)');
      const [{ u }] = (await check.query('select count(*)::int as u from scratch')).rows;
      assert.is(u, 0, 'an unlogged table comes back empty');
    } finally {
      await check.end();
      await cluster.stop(restored);
    }
    await store.close();
  } finally {
    await client.end().catch(() => {});
    await writer.end().catch(() => {});
  }
});

direct.run();
