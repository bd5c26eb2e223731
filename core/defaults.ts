import launcherCompute from '../plugins/launcher-compute/index.js';
import launcherSafekeeper from '../plugins/launcher-safekeeper/index.js';
import safekeeperOffload from '../plugins/safekeeper-offload/index.js';
import storageFile from '../plugins/storage-file/index.js';
import type { PluginOption } from './plugin.js';

/** The plugins used when the config has no `plugins` (or there is no config file). */
export function defaultPlugins(): PluginOption[] {
  return [storageFile(), launcherCompute(), launcherSafekeeper(), safekeeperOffload()];
}
