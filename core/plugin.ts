import { NeonError, PluginError } from './errors.js';
import { LIFECYCLE_HOOKS, type LifecycleHookName, type NeonHooks } from './hooks.js';
import type { BackupFormat, FormatRequest } from './format.js';
import type { Launcher, LauncherRequest } from './launcher.js';
import type { Storage, StorageRequest } from './storage.js';

/** The command a configuration is loaded for (`neon init`, `neon start`, …); the daemon counts as `start`. */
export interface ConfigEnv {
  command: string;
}

type HookArg<K extends LifecycleHookName> = Parameters<NeonHooks[K]['promise']>[0];

/** A hook handler: a function, or Vite's object form that also says when it runs relative to the others. */
export type ObjectHook<F> = F | { order?: 'pre' | 'post' | null; handler: F };

/** A keyed provider: the keys it claims and the function that answers for one of them. */
export interface Provider<Req, Res> {
  handler: (request: Req) => Res | undefined | Promise<Res | undefined>;
}

/**
 * A neon plugin: a name, optional ordering and filtering, and the hooks it taps. Plugins are made by factories,
 * `(options) => NeonPlugin`, listed in `plugins` of `neon.config.ts`.
 *
 * Ordering follows Vite: plugins with `enforce: 'pre'` run before the others and `'post'` after; within that, a
 * handler given as `{ order: 'pre' | 'post', handler }` moves before or after the normal handlers of every plugin.
 */
export type NeonPlugin = {
  /** Shown in logs and stamped on errors raised by this plugin. */
  name: string;
  enforce?: 'pre' | 'post';
  /** Only use this plugin for one command, or when the function says so. */
  apply?: string | ((env: ConfigEnv) => boolean);
  /** Open a storage for the URL schemes listed (`file`, `s3`, …). */
  resolveStorage?: Provider<StorageRequest, Storage> & { schemes: string[] };
  /** Pack and unpack the snapshot formats listed (`pgdata`, `walg`, …). */
  resolveFormat?: Provider<FormatRequest, BackupFormat> & { formats: string[] };
  /** Launch processes of the component kinds listed (`compute`, …). */
  resolveLauncher?: Provider<LauncherRequest, Launcher> & { kinds: string[] };
  /** Free-form public API for other plugins (as in Vite). */
  api?: unknown;
} & {
  [K in LifecycleHookName]?: ObjectHook<(arg: HookArg<K>) => void | Promise<void>>;
};

/** What `plugins` may hold: plugins, falsy entries (skipped) and nested arrays (flattened). */
export type PluginOption = NeonPlugin | false | null | undefined | PluginOption[];

const KNOWN_KEYS = new Set<string>([
  'name',
  'enforce',
  'apply',
  'api',
  'resolveStorage',
  'resolveFormat',
  'resolveLauncher',
  ...LIFECYCLE_HOOKS,
]);

const RANK = { pre: -1, post: 1 } as const;
const rank = (value: unknown) => (value === 'pre' || value === 'post' ? RANK[value] : 0);

/**
 * Flatten `plugins`, drop falsy entries, check each plugin's shape, add the built-ins and keep the ones that
 * `apply`. Built-ins are always there, as in Vite and webpack: listing one plugin must not drop the launchers.
 * A user plugin with a built-in's `name` replaces it (that is how a built-in gets options); user plugins come
 * first, so that for the "which plugin handles this?" hooks a user's provider answers before a built-in one.
 */
export function resolvePlugins(options: PluginOption[] | undefined, env: ConfigEnv, builtins: PluginOption[] = []): NeonPlugin[] {
  const user = (options ?? []).flat(Infinity as 1).filter(Boolean).map(checkPlugin);
  const taken = new Set(user.map((p) => p.name));
  const defaults = builtins.flat(Infinity as 1).filter(Boolean).map(checkPlugin).filter((p) => !taken.has(p.name));
  const applied = [...user, ...defaults].filter((p) =>
    typeof p.apply === 'function' ? p.apply(env) : p.apply === undefined || p.apply === env.command,
  );
  // Array.prototype.sort is stable, so plugins keep their configured order within pre / normal / post.
  return applied.sort((a, b) => rank(a.enforce) - rank(b.enforce));
}

function checkPlugin(value: unknown, index: number): NeonPlugin {
  if (typeof value !== 'object' || value === null || typeof (value as NeonPlugin).name !== 'string') {
    throw new NeonError(
      'bad_plugin',
      `plugins[${index}] is not a plugin: expected an object with a "name" (did you forget to call the factory?)`,
    );
  }
  const plugin = value as NeonPlugin;
  for (const key of Object.keys(plugin)) {
    if (!KNOWN_KEYS.has(key)) {
      throw new NeonError(
        'bad_plugin',
        `plugin "${plugin.name}" has an unknown property "${key}"; hooks are: ${LIFECYCLE_HOOKS.join(', ')}`,
      );
    }
  }
  if (plugin.enforce !== undefined && plugin.enforce !== 'pre' && plugin.enforce !== 'post') {
    throw new NeonError('bad_plugin', `plugin "${plugin.name}": enforce must be "pre" or "post", not ${JSON.stringify(plugin.enforce)}`);
  }
  return plugin;
}

/**
 * Tap every plugin's hooks into the hook table. The tapable stage encodes the order: the handler's `order`
 * weighs ten times the plugin's `enforce`, so that `{ order: 'pre' }` of a normal plugin still runs before a
 * plain handler of an `enforce: 'pre'` plugin, as in Vite.
 */
export function applyPlugins(hooks: NeonHooks, plugins: NeonPlugin[]): void {
  for (const plugin of plugins) {
    const enforce = rank(plugin.enforce);
    for (const hookName of LIFECYCLE_HOOKS) {
      const entry = plugin[hookName];
      if (!entry) continue;
      const handler = typeof entry === 'function' ? entry : entry.handler;
      const order = typeof entry === 'function' ? 0 : rank(entry.order);
      if (typeof handler !== 'function') {
        throw new NeonError('bad_plugin', `plugin "${plugin.name}": hook ${hookName} must be a function or { handler }`);
      }
      const hook = hooks[hookName] as { tapPromise(options: object, fn: (arg: unknown) => Promise<void>): void };
      hook.tapPromise({ name: plugin.name, stage: order * 10 + enforce }, async (arg) => {
        try {
          await (handler as (arg: unknown) => unknown).call(plugin, arg);
        } catch (error) {
          throw PluginError.wrap(plugin.name, hookName, error);
        }
      });
    }
    tapProvider(hooks.resolveStorage, plugin, 'resolveStorage', plugin.resolveStorage?.schemes, enforce);
    tapProvider(hooks.resolveFormat, plugin, 'resolveFormat', plugin.resolveFormat?.formats, enforce);
    tapProvider(hooks.resolveLauncher, plugin, 'resolveLauncher', plugin.resolveLauncher?.kinds, enforce);
  }
}

type ProviderHookName = 'resolveStorage' | 'resolveFormat' | 'resolveLauncher';

function tapProvider(
  map: NeonHooks[ProviderHookName],
  plugin: NeonPlugin,
  hookName: ProviderHookName,
  keys: string[] | undefined,
  stage: number,
): void {
  const provider = plugin[hookName] as Provider<unknown, unknown> | undefined;
  if (!provider) return;
  if (!Array.isArray(keys) || typeof provider.handler !== 'function') {
    throw new NeonError('bad_plugin', `plugin "${plugin.name}": ${hookName} needs a list of keys and a handler`);
  }
  for (const key of keys) {
    const hook = map.for(key.toLowerCase()) as unknown as {
      tapPromise(options: object, fn: (request: unknown) => Promise<unknown>): void;
    };
    hook.tapPromise({ name: plugin.name, stage }, async (request) => {
      try {
        return (await provider.handler.call(plugin, request)) ?? undefined;
      } catch (error) {
        throw PluginError.wrap(plugin.name, hookName, error);
      }
    });
  }
}

/**
 * Check a plugin factory's options against the names it knows, so that a typo is an error rather than a
 * silently ignored setting.
 */
export function checkPluginOptions<T extends object>(plugin: string, options: T | undefined, known: readonly (keyof T & string)[]): T {
  const given = options ?? ({} as T);
  if (typeof given !== 'object' || given === null || Array.isArray(given)) {
    throw PluginError.wrap(plugin, undefined, new NeonError('bad_plugin_option', 'options must be an object'));
  }
  for (const key of Object.keys(given)) {
    if (!known.includes(key as keyof T & string)) {
      const list = known.length ? known.join(', ') : 'none';
      throw PluginError.wrap(plugin, undefined, new NeonError('bad_plugin_option', `unknown option "${key}" (known options: ${list})`));
    }
  }
  return given;
}
