import { randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Loader } from 'cosmiconfig';
import { NeonError, messageOf } from './errors.js';
import { resolvePlugins, type ConfigEnv, type NeonPlugin, type PluginOption } from './plugin.js';

/** Postgres settings of `neon.config.ts`. */
export interface PostgresConfig {
  /** Major version for new repositories (default: the embedded one, 17). `neon init --pg-version` wins. */
  version?: number;
  /** A folder holding `postgres`, `initdb` and `pg_ctl`, used instead of looking for them. */
  bin?: string;
  /** When neon runs as root, Postgres runs as this user (default `postgres`): Postgres refuses root. */
  user?: string;
  /** Port of the main compute (default 55432, or a free one when that is taken). */
  port?: number;
  /** shared_buffers of each compute (default 128MB). */
  sharedBuffers?: string;
  /** More postgresql.conf settings for every compute. */
  settings?: Record<string, string | number | boolean>;
}

/** The daemon's REST endpoint. */
export interface DaemonConfig {
  /**
   * Port on 127.0.0.1 (default 3000). When the default is taken the daemon picks a free port and says so; a port
   * set here (or in NEON_PORT) that is taken is an error.
   */
  port?: number;
}

/** What `neon.config.ts` exports (or `package.json#neon`, or `neon.config.json`). */
export interface NeonConfig {
  /**
   * Plugins: factories' results; falsy entries are skipped and nested arrays flattened. The built-ins (storage-file,
   * the launchers, safekeeper-offload) are always added; list one with options to replace it.
   */
  plugins?: PluginOption[];
  /** Durable home of the repository's history: a path, `file:///abs/path` or `s3://bucket/prefix`. */
  storage_dest?: string;
  daemon?: DaemonConfig;
  postgres?: PostgresConfig;
  /**
   * How many safekeepers receive the primary's WAL (default 1). A commit returns once a majority of them has
   * fsynced it: 1 of 1, 2 of 3. 0 turns them off (commits then wait for nothing but the local disk).
   */
  safekeepers?: number;
  /** When the pageserver takes base images in the background (and on demand: `neon image create`). */
  pageserver?: PageserverConfig;
}

/** Background base images: after this much WAL, or this much time, whichever comes first. */
export interface PageserverConfig {
  /** Take an image once this many MB of WAL were written since the last one (default 64). */
  imageAfterMb?: number;
  /** Take an image at least this often while WAL is written (default 10 minutes). */
  imageIntervalMinutes?: number;
}

/** A config object, a promise of one, or a function of the command that returns one. */
export type UserConfigExport = NeonConfig | Promise<NeonConfig> | ((env: ConfigEnv) => NeonConfig | Promise<NeonConfig>);

/** Identity helper that gives `neon.config.ts` its types. */
export function defineConfig(config: NeonConfig): NeonConfig;
export function defineConfig(config: Promise<NeonConfig>): Promise<NeonConfig>;
export function defineConfig(
  config: (env: ConfigEnv) => NeonConfig | Promise<NeonConfig>,
): (env: ConfigEnv) => NeonConfig | Promise<NeonConfig>;
export function defineConfig(config: UserConfigExport): UserConfigExport {
  return config;
}

/** A loaded configuration: the user's object, the plugins that apply to this command, and where it came from. */
export interface ResolvedConfig {
  config: NeonConfig;
  plugins: NeonPlugin[];
  /** The file it was read from; undefined when the built-in defaults apply. */
  file?: string;
}

/** The places searched, in order, in the project folder only. */
export const CONFIG_FILES = [
  'package.json',
  'neon.config.ts',
  'neon.config.mts',
  'neon.config.js',
  'neon.config.mjs',
  'neon.config.cjs',
  'neon.config.json',
];

/**
 * Load `neon.config.*` (or `package.json#neon`) from `dir`, evaluate it for `env`, and resolve its plugins
 * together with `builtins` (always applied; a configured plugin of the same name replaces one).
 */
export async function loadConfig(dir: string, env: ConfigEnv, builtins: PluginOption[] = []): Promise<ResolvedConfig> {
  // cosmiconfig (with its YAML parser) is ~200 KB of code to load: a folder with nothing to find skips it.
  if (await nothingToLoad(dir)) return { config: {}, plugins: resolvePlugins([], env, builtins) };
  // A CommonJS package: the bundle's import() gives it as the default export only, Node's gives names too.
  const loaded = await import('cosmiconfig');
  const { cosmiconfig, defaultLoaders } = 'cosmiconfig' in loaded ? loaded : (loaded as { default: typeof loaded }).default;
  const explorer = cosmiconfig('neon', {
    searchPlaces: CONFIG_FILES,
    searchStrategy: 'none',
    cache: false,
    loaders: {
      '.js': boxed(importDefault),
      '.mjs': boxed(importDefault),
      '.cjs': boxed(importDefault),
      '.ts': boxed(loadTs),
      '.mts': boxed(loadTs),
      '.json': boxed(defaultLoaders['.json']),
    },
  });
  let found: { config: unknown; filepath: string } | null;
  try {
    found = await explorer.search(dir);
  } catch (error) {
    throw new NeonError('config_error', `could not load the neon config in ${dir}: ${firstLine(messageOf(error))}`, { cause: error });
  }
  if (!found) return { config: {}, plugins: resolvePlugins([], env, builtins) };
  const file = path.relative(dir, found.filepath) || found.filepath;
  let value = isPackageJson(found.filepath) ? found.config : (found.config as Boxed).exported;
  try {
    if (typeof value === 'function') value = await value(env);
    value = await value;
  } catch (error) {
    throw new NeonError('config_error', `${file}: the exported function threw: ${messageOf(error)}`, { cause: error });
  }
  const config = checkConfig(value, file);
  const plugins = resolvePlugins(config.plugins, env, builtins);
  return { config, plugins, file: found.filepath };
}

const isPackageJson = (filepath: string) => path.basename(filepath) === 'package.json';

/**
 * True when `dir` has no config file and no package.json with a `neon` key: what cosmiconfig would find there is
 * nothing. A package.json that does not parse is left to cosmiconfig, which reports it.
 */
async function nothingToLoad(dir: string): Promise<boolean> {
  const names = new Set(await fs.readdir(dir).catch(() => [] as string[]));
  if (CONFIG_FILES.some((name) => name !== 'package.json' && names.has(name))) return false;
  if (!names.has('package.json')) return true;
  try {
    const parsed = JSON.parse(await fs.readFile(path.join(dir, 'package.json'), 'utf8')) as unknown;
    return typeof parsed === 'object' && parsed !== null && !Object.hasOwn(parsed, 'neon');
  } catch {
    return false;
  }
}

/** What the loaders hand cosmiconfig for a config file: its export, boxed. */
type Boxed = { exported: unknown };

/**
 * Box a config file's export: cosmiconfig takes a null or undefined export for "no config here" and moves on to the
 * defaults, which would hide `export default null` or a forgotten `export default`; checkConfig reports them instead.
 * package.json stays as it is: cosmiconfig reads its `neon` key itself.
 */
function boxed(load: Loader): Loader {
  return async (filepath, content) => {
    const exported = await load(filepath, content);
    return isPackageJson(filepath) ? exported : ({ exported } satisfies Boxed);
  };
}

/**
 * Import a JS config once. cosmiconfig's loader retries a failed import() with require(), which runs a CommonJS
 * config a second time and, on Node >= 20.19, replaces the syntax error of an ES module with an internal assertion.
 */
async function importDefault(filepath: string): Promise<unknown> {
  return (await import(pathToFileURL(filepath).href)).default;
}

/** Compile a TypeScript config to a temporary .mjs beside it (so relative imports work), import it, remove it. */
async function loadTs(filepath: string, content: string): Promise<unknown> {
  const ts = (await import('typescript')).default;
  const { outputText, diagnostics = [] } = ts.transpileModule(content, {
    fileName: filepath,
    reportDiagnostics: true,
    compilerOptions: { module: ts.ModuleKind.ES2022, target: ts.ScriptTarget.ES2022 },
  });
  const [problem] = diagnostics;
  if (problem) {
    const at = problem.file && problem.start !== undefined ? problem.file.getLineAndCharacterOfPosition(problem.start) : undefined;
    const where = at ? `${path.basename(filepath)}:${at.line + 1}:${at.character + 1}` : path.basename(filepath);
    throw new Error(`${where}: ${ts.flattenDiagnosticMessageText(problem.messageText, ' ')}`);
  }
  const compiled = `${filepath}.${randomUUID()}.mjs`;
  await fs.writeFile(compiled, outputText);
  try {
    return await importDefault(compiled);
  } finally {
    await fs.rm(compiled, { force: true });
  }
}

// cosmiconfig prefixes messages with a multi-line "TypeScript Error in …"; keep the line that says what broke.
function firstLine(message: string): string {
  return message.split('\n').filter(Boolean).slice(-1)[0] ?? message;
}

const TOP_KEYS: Record<string, string> = {
  plugins: 'array',
  storage_dest: 'string',
  daemon: 'object',
  postgres: 'object',
  safekeepers: 'number',
  pageserver: 'object',
};
const PAGESERVER_KEYS: Record<string, string> = { imageAfterMb: 'number', imageIntervalMinutes: 'number' };
const DAEMON_KEYS: Record<string, string> = { port: 'number' };
const POSTGRES_KEYS: Record<string, string> = {
  version: 'number',
  bin: 'string',
  user: 'string',
  port: 'number',
  sharedBuffers: 'string',
  settings: 'object',
};

/** Check the shape of a config object: every key known, every value of the right type. */
export function checkConfig(value: unknown, file: string): NeonConfig {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    const got = value === null ? 'null' : Array.isArray(value) ? 'an array' : typeof value;
    throw new NeonError('config_error', `${file} must export an object (or a function returning one), but exported ${got}`);
  }
  checkKeys(value as Record<string, unknown>, TOP_KEYS, file, '');
  const config = value as NeonConfig;
  if (config.daemon) checkKeys(config.daemon as Record<string, unknown>, DAEMON_KEYS, file, 'daemon.');
  if (config.postgres) checkKeys(config.postgres as Record<string, unknown>, POSTGRES_KEYS, file, 'postgres.');
  if (config.pageserver) checkKeys(config.pageserver as Record<string, unknown>, PAGESERVER_KEYS, file, 'pageserver.');
  if (config.safekeepers !== undefined && !(Number.isInteger(config.safekeepers) && config.safekeepers >= 0 && config.safekeepers <= 9)) {
    throw new NeonError('config_error', `${file}: "safekeepers" must be a whole number from 0 to 9, not ${config.safekeepers}`);
  }
  return config;
}

function checkKeys(object: Record<string, unknown>, known: Record<string, string>, file: string, prefix: string) {
  for (const [key, val] of Object.entries(object)) {
    const type = known[key];
    if (!type) {
      throw new NeonError(
        'config_error',
        `${file}: unknown setting "${prefix}${key}" (known: ${Object.keys(known)
          .map((k) => prefix + k)
          .join(', ')})`,
      );
    }
    if (val === undefined) continue;
    const actual = Array.isArray(val) ? 'array' : val === null ? 'null' : typeof val;
    if (actual !== type) throw new NeonError('config_error', `${file}: "${prefix}${key}" must be a ${type}, not ${actual}`);
  }
}
