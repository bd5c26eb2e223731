import { spawn } from 'node:child_process';
import fs from 'node:fs';
import type { LaunchedProcess, LaunchSpec } from './launcher.js';

/**
 * Start a component process, the way every launcher plugin does: output appended to its log file, the
 * unprivileged user applied, an IPC channel when the spec asks for one. Resolves once the process runs.
 * node:child_process rather than execa: a launch is on the path of every `neon start` (Postgres, each safekeeper),
 * and execa's first spawn cost ~0.1 s more on an idle machine; nothing of what it adds is used here.
 */
export async function launchProcess(
  spec: LaunchSpec,
  env: { env?: Record<string, string>; extendEnv?: boolean } = {},
): Promise<LaunchedProcess> {
  const extra = env.env ?? spec.env;
  const log = fs.openSync(spec.logFile, 'a');
  let child: ReturnType<typeof spawn>;
  try {
    child = spawn(spec.command, spec.args, {
      cwd: spec.cwd,
      env: (env.extendEnv ?? true) ? { ...process.env, ...extra } : extra,
      uid: spec.uid,
      gid: spec.gid,
      stdio: ['ignore', log, log, ...(spec.ipc ? (['ipc'] as const) : [])],
      serialization: 'json',
    });
  } finally {
    // The child has its own copy of the descriptor.
    fs.closeSync(log);
  }
  const exited = new Promise<{ code: number | null; signal: string | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  await new Promise<void>((resolve, reject) => {
    child.once('spawn', () => resolve());
    child.once('error', reject);
  });
  // Later errors (a signal to a process already reaped) must not become uncaught exceptions.
  child.on('error', () => undefined);
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
