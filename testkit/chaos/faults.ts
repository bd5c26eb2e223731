import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { isAlive, signal } from '../../lib/proc.js';
import { neon, neonJson } from '../env.js';

// The faults the chaos scheduler injects. Each one returns what it did, or throws when it could not be injected
// (the component was not running): a fault that did not happen is not counted.

/** A repository under test: its project folder, storage_dest folder and the compute on the second branch. */
export interface Target {
  dir: string;
  storage: string;
  sideCompute: string;
}

export type FaultKind =
  | 'kill-primary'
  | 'kill-safekeeper'
  | 'stop-safekeeper'
  | 'kill-daemon'
  | 'storage-unwritable'
  | 'snapshot'
  | 'image'
  | 'branch'
  | 'concurrent-rest';

interface StatusComponents {
  daemon: { pid: number };
  components: { kind: string; name: string; pid: number | null; state: string }[];
}

async function status(target: Target): Promise<StatusComponents> {
  return neonJson(['status'], { cwd: target.dir });
}

function pidOf(target: Target, file: string): number | undefined {
  try {
    return Number(fs.readFileSync(path.join(target.dir, '.neon', file), 'utf8').trim()) || undefined;
  } catch {
    return undefined;
  }
}

const pick = <T>(items: T[]): T => items[Math.floor(Math.random() * items.length)];

/** Inject one fault of `kind`; answers a short description. */
export async function inject(kind: FaultKind, target: Target, counter: number): Promise<string> {
  const cli = (...args: string[]) => neon(args, { cwd: target.dir });
  switch (kind) {
    case 'kill-primary': {
      const main = (await status(target)).components.find((c) => c.kind === 'compute' && c.name === 'main' && c.pid);
      if (!main?.pid) throw new Error('main compute not running');
      signal(main.pid, 'SIGKILL');
      return `SIGKILL compute main (pid ${main.pid})`;
    }
    case 'kill-safekeeper':
    case 'stop-safekeeper': {
      const sks = (await status(target)).components.filter((c) => c.kind === 'safekeeper' && c.pid);
      if (!sks.length) throw new Error('no safekeeper running');
      const sk = pick(sks);
      if (kind === 'kill-safekeeper') {
        signal(sk.pid!, 'SIGKILL');
        return `SIGKILL safekeeper ${sk.name} (pid ${sk.pid})`;
      }
      signal(sk.pid!, 'SIGSTOP');
      await sleep(3000);
      signal(sk.pid!, 'SIGCONT');
      return `SIGSTOP safekeeper ${sk.name} for 3 s`;
    }
    case 'kill-daemon': {
      const pid = pidOf(target, 'daemon.pid');
      if (!pid || !isAlive(pid)) throw new Error('daemon not running');
      signal(pid, 'SIGKILL');
      return `SIGKILL daemon (pid ${pid})`;
    }
    case 'storage-unwritable': {
      // Root ignores file modes, so the storage folder is made immutable instead (ext4/xfs chattr +i).
      const wal = path.join(target.storage, 'wal');
      execFileSync('chattr', ['+i', fs.existsSync(wal) ? wal : target.storage]);
      await sleep(5000);
      execFileSync('chattr', ['-i', fs.existsSync(wal) ? wal : target.storage]);
      return 'storage_dest immutable for 5 s';
    }
    case 'snapshot': {
      const name = `chaos-${counter}`;
      const result = await cli('snapshot', 'create', name);
      if (result.code !== 0) throw new Error(result.stderr);
      return `snapshot ${name}`;
    }
    case 'image': {
      const result = await cli('image', 'create');
      if (result.code !== 0) throw new Error(result.stderr);
      return 'base image';
    }
    case 'branch': {
      const name = `chaos-b${counter}`;
      const created = await cli('branch', 'create', name);
      if (created.code !== 0) throw new Error(created.stderr);
      await cli('branch', 'delete', name);
      return `branch ${name} created and deleted`;
    }
    case 'concurrent-rest': {
      const actions = ['stop', 'start', 'stop', 'start', 'start', 'stop', 'start'];
      const results = await Promise.all(actions.map((action) => cli('pg', action, '-n', target.sideCompute, '--json')));
      // --json errors are { code, message }; "internal" is what the REST layer answers for a 500.
      const internal = results.find((r) => r.code !== 0 && /"code":"internal"/.test(r.stderr));
      if (internal) throw new ChaosFailure(`a concurrent pg start/stop answered a server error: ${internal.stderr}`);
      await cli('pg', 'start', '-n', target.sideCompute);
      return `${actions.length} concurrent start/stop of ${target.sideCompute}`;
    }
  }
}

/** A fault whose injection itself showed a bug (a 5xx, a crash): fails the run, unlike a fault that could not run. */
export class ChaosFailure extends Error {}
