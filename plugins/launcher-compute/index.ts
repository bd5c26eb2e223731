import { launchProcess } from '../../core/launch-process.js';
import type { Launcher, LaunchedProcess, LaunchSpec } from '../../core/launcher.js';
import { checkPluginOptions, type NeonPlugin } from '../../core/plugin.js';

/** Options of {@link launcherCompute}; none yet, listed so that a typo is reported. */
export type LauncherComputeOptions = Record<string, never>;

/**
 * Launches compute processes (`postgres -D …`) as children of the daemon (node:child_process): output appended to the
 * compute's log file, the environment reduced to what Postgres needs, and the unprivileged user applied.
 */
export default function launcherCompute(options?: LauncherComputeOptions): NeonPlugin {
  checkPluginOptions('launcher-compute', options, []);
  return {
    name: 'launcher-compute',
    resolveLauncher: { kinds: ['compute'], handler: () => launcher },
  };
}

const launcher: Launcher = {
  launch: (spec: LaunchSpec): Promise<LaunchedProcess> =>
    launchProcess(spec, {
      // Only what Postgres needs: the daemon's environment holds nothing it should inherit.
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', LC_ALL: 'C', LANG: 'C', TZ: process.env.TZ ?? 'UTC', ...spec.env },
      extendEnv: false,
    }),
};
