import { execa } from 'execa';
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
  async launch(spec: LaunchSpec): Promise<LaunchedProcess> {
    const child = execa(spec.command, spec.args, {
      cwd: spec.cwd,
      env: spec.env,
      uid: spec.uid,
      gid: spec.gid,
      stdin: 'ignore',
      stdout: { file: spec.logFile, append: true },
      stderr: { file: spec.logFile, append: true },
      ipc: spec.ipc ?? true,
      serialization: 'json',
      reject: false,
    });
    await new Promise<void>((resolve, reject) => {
      child.once('spawn', () => resolve());
      child.once('error', reject);
    });
    const exited = child.then((result) => ({ code: result.exitCode ?? null, signal: result.signal ?? null }));
    return {
      pid: child.pid!,
      exited,
      kill: (signal) => child.kill(signal),
      send: (message) => {
        if (child.connected) child.send(message as object);
      },
      onMessage: (listener) => child.on('message', listener),
    };
  },
};
