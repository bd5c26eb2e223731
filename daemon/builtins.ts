import formatPgdata from '../plugins/format-pgdata/index.js';
import formatTar from '../plugins/format-tar/index.js';
import formatWalg from '../plugins/format-walg/index.js';
import launcherCompute from '../plugins/launcher-compute/index.js';
import launcherSafekeeper from '../plugins/launcher-safekeeper/index.js';
import safekeeperOffload from '../plugins/safekeeper-offload/index.js';
import storageFile from '../plugins/storage-file/index.js';
import storageS3 from '../plugins/storage-s3/index.js';
import type { PluginOption } from '../core/plugin.js';

/**
 * The plugins every repository runs with, whatever the config lists (a configured plugin of the same name
 * replaces one: that is how they get options). The core knows none of them: they are handed to `loadConfig`.
 */
export function builtinPlugins(): PluginOption[] {
  return [
    storageFile(),
    storageS3(),
    launcherCompute(),
    launcherSafekeeper(),
    safekeeperOffload(),
    // Backup formats load their engines (archive code, codecs) on first use only.
    formatPgdata(),
    formatTar(),
    formatWalg(),
  ];
}
