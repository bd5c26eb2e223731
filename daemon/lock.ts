import fs from 'node:fs/promises';
import { NeonError } from '../core/errors.js';
import { cmdlineOf, isAlive } from '../lib/proc.js';

/** True when `pid` is a neon daemon of the repository `repoDir` (pids are reused after a crash). */
export function isDaemonOf(pid: number, repoDir: string): boolean {
  if (!isAlive(pid)) return false;
  const cmd = cmdlineOf(pid);
  return !!cmd && cmd.includes('__daemon') && cmd.includes(repoDir);
}

/**
 * Take the repository's daemon lock: a pid file created exclusively. A pid file whose process is gone, or is
 * not a daemon of this repository, is stale (a crashed daemon) and is replaced.
 */
export async function acquireDaemonLock(file: string, repoDir: string): Promise<() => Promise<void>> {
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const handle = await fs.open(file, 'wx', 0o644);
      await handle.writeFile(`${process.pid}\n`);
      await handle.sync();
      await handle.close();
      return async () => {
        const owner = Number((await fs.readFile(file, 'utf8').catch(() => '')).trim());
        if (owner === process.pid) await fs.rm(file, { force: true });
      };
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
    const owner = Number((await fs.readFile(file, 'utf8').catch(() => '')).trim());
    if (owner && owner !== process.pid && isDaemonOf(owner, repoDir)) {
      throw new NeonError('already_running', `a neon daemon (pid ${owner}) already runs for ${repoDir}`, { status: 409 });
    }
    await fs.rm(file, { force: true });
  }
  throw new NeonError('lock_failed', `could not take the daemon lock ${file}`);
}
