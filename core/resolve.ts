import { UnhandledSchemeError } from './errors.js';
import type { BackupFormat } from './format.js';
import type { NeonHooks } from './hooks.js';
import type { Launcher } from './launcher.js';
import { KNOWN_STORAGE_PLUGINS, parseStorageUrl, type Storage, type StorageRequest } from './storage.js';

// The bail hooks answer "which plugin handles this?"; these wrappers turn silence into an error that says
// which plugin to add.

/**
 * Open a storage through the plugin that claims its scheme. Takes what {@link parseStorageUrl} made of the user's
 * `--storage_dest` (parsed once, where it was typed) or a URL already normalised (from the repository's config).
 */
export async function resolveStorage(hooks: NeonHooks, target: StorageRequest | string): Promise<Storage> {
  const request = typeof target === 'string' ? parseStorageUrl(target) : target;
  const storage = await hooks.resolveStorage.get(request.scheme)?.promise(request);
  if (!storage) {
    throw new UnhandledSchemeError('storage', request.scheme, `storage "${request.raw}"`, KNOWN_STORAGE_PLUGINS[request.scheme]);
  }
  return storage;
}

const KNOWN_FORMAT_PLUGINS: Record<string, string> = {
  pgdata: "formatPgdata() from 'neon-local/plugins/format-pgdata'",
  tar: "formatTar() from 'neon-local/plugins/format-tar'",
  walg: "formatWalg() from 'neon-local/plugins/format-walg'",
};

/** The backup format plugin for `--snapshot_format`. */
export async function resolveFormat(hooks: NeonHooks, format: string): Promise<BackupFormat> {
  const found = await hooks.resolveFormat.get(format.toLowerCase())?.promise({ format });
  if (!found) throw new UnhandledSchemeError('format', format, `--snapshot_format=${format}`, KNOWN_FORMAT_PLUGINS[format]);
  return found;
}

/** The launcher for a component kind (`compute`, …). */
export async function resolveLauncher(hooks: NeonHooks, kind: string): Promise<Launcher> {
  const found = await hooks.resolveLauncher.get(kind)?.promise({ kind });
  if (!found) {
    const hint = kind === 'compute' ? "launcherCompute() from 'neon-local/plugins/launcher-compute'" : undefined;
    throw new UnhandledSchemeError('launcher', kind, `starting a ${kind}`, hint);
  }
  return found;
}
