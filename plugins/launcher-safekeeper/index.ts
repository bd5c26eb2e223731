import { launchProcess } from '../../core/launch-process.js';
import type { Launcher, LaunchedProcess, LaunchSpec } from '../../core/launcher.js';
import { checkPluginOptions, type NeonPlugin } from '../../core/plugin.js';

/** Options of {@link launcherSafekeeper}; none yet, listed so that a typo is reported. */
export type LauncherSafekeeperOptions = Record<string, never>;

/**
 * Launches safekeeper processes (`neon __safekeeper`): a Node process per safekeeper, with an IPC
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
  launch: (spec: LaunchSpec): Promise<LaunchedProcess> =>
    launchProcess({ ...spec, ipc: spec.ipc ?? true }, { env: safekeeperEnv(spec.env), extendEnv: false }),
};

/**
 * The daemon's environment without NODE_EXTRA_CA_CERTS: Node parses that bundle at every start (~0.1 s of CPU
 * for the Debian one, while Postgres starts beside it), and a safekeeper makes no TLS connections.
 */
function safekeeperEnv(extra: Record<string, string> | undefined): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(process.env)) if (value !== undefined && key !== 'NODE_EXTRA_CA_CERTS') env[key] = value;
  return { ...env, ...extra };
}
