import { execa } from 'execa';
import type { LaunchedProcess, LaunchSpec } from './launcher.js';

/**
 * Start a component process with execa, the way every launcher plugin does: output appended to its log file, the
 * unprivileged user applied, an IPC channel when the spec asks for one. Resolves once the process runs.
 */
export async function launchWithExeca(
  spec: LaunchSpec,
  env: { env?: Record<string, string>; extendEnv?: boolean } = {},
): Promise<LaunchedProcess> {
  const child = execa(spec.command, spec.args, {
    cwd: spec.cwd,
    env: env.env ?? spec.env,
    extendEnv: env.extendEnv ?? true,
    uid: spec.uid,
    gid: spec.gid,
    stdin: 'ignore',
    stdout: { file: spec.logFile, append: true },
    stderr: { file: spec.logFile, append: true },
    ...(spec.ipc ? { ipc: true, serialization: 'json' as const } : {}),
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
    ...(spec.ipc
      ? {
          send: (message: unknown) => {
            if (child.connected) child.send(message as object);
          },
          onMessage: (listener: (message: unknown) => void) => void child.on('message', listener),
        }
      : {}),
  };
}
