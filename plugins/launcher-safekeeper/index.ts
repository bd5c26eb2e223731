import { launchWithExeca } from '../../core/launch-process.js';
import type { Launcher, LaunchedProcess, LaunchSpec } from '../../core/launcher.js';
import { checkPluginOptions, type NeonPlugin } from '../../core/plugin.js';

/** Options of {@link launcherSafekeeper}; none yet, listed so that a typo is reported. */
export type LauncherSafekeeperOptions = Record<string, never>;

/**
 * Launches safekeeper processes (`neon __safekeeper`) with execa: a Node process per safekeeper, with an IPC
 * channel to the daemon for its configuration, status and "segment completed" events, output appended to its log.
 */
export default function launcherSafekeeper(options?: LauncherSafekeeperOptions): NeonPlugin {
  checkPluginOptions('launcher-safekeeper', options, []);
  return {
    name: 'launcher-safekeeper',
    resolveLauncher: { kinds: ['safekeeper'], handler: () => launcher },
  };
}

const launcher: Launcher = {
  launch: (spec: LaunchSpec): Promise<LaunchedProcess> => launchWithExeca({ ...spec, ipc: spec.ipc ?? true }),
};
