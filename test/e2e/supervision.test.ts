import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { cleanup, neon, neonJson, processesOf, tmpDir } from '../../testkit/env.js';
import { query } from '../../testkit/pg.js';
import { waitFor } from '../../testkit/wait.js';

// Components heal themselves as under a service manager, and a fault stops committed writes only briefly.

/**
 * A ledger writer: one insert per transaction, an id counted as acknowledged only once its COMMIT returned, the
 * time of every acknowledged commit kept to measure how long writes were unavailable.
 */
class Ledger {
  readonly acked: number[] = [];
  readonly times: number[] = [];
  private next = 1;
  private running = true;
  private done?: Promise<void>;

  constructor(private readonly url: string) {}

  start(): void {
    this.done = this.loop();
  }

  async stop(): Promise<void> {
    this.running = false;
    await this.done;
  }

  private async loop(): Promise<void> {
    let client: pg.Client | undefined;
    while (this.running) {
      try {
        if (!client) {
          client = new pg.Client({ connectionString: this.url, connectionTimeoutMillis: 2000, query_timeout: 90_000 });
          client.on('error', () => undefined);
          await client.connect();
        }
        const id = this.next++;
        await client.query('insert into ledger (id) values ($1)', [id]);
        this.acked.push(id);
        this.times.push(Date.now());
      } catch {
        void client?.end().catch(() => undefined);
        client = undefined;
        await sleep(20);
      }
    }
    await client?.end().catch(() => undefined);
  }

  /** The longest pause between acknowledged commits from the last one before `from` until `to`. */
  longestGap(from: number, to: number): number {
    let gap = 0;
    let last = [...this.times].reverse().find((t) => t <= from) ?? from;
    for (const t of this.times) {
      if (t <= last || t > to) continue;
      gap = Math.max(gap, t - last);
      last = t;
    }
    return gap;
  }

  /** Resolves once `count` more commits were acknowledged after now (writes have resumed). */
  async resumed(count = 20, timeoutMs = 60_000): Promise<void> {
    const target = this.acked.length + count;
    await waitFor(`writes to resume (${count} commits)`, () => this.acked.length >= target, timeoutMs);
  }
}

let dir = '';
const run = (args: string[]) => neonJson(args, { cwd: dir });
const pidOf = async (name: string) => (await run(['pg', 'show', '-n', name])).pid as number;

async function daemonPid(): Promise<number> {
  return Number(fs.readFileSync(path.join(dir, '.neon', 'daemon.pid'), 'utf8'));
}

const supervision = suite('supervision: faults heal without help, writes resume');
let ledger: Ledger | undefined;
const gaps: Record<string, number[]> = {};

supervision.before(async () => {
  dir = tmpDir();
  const started = await run(['start']);
  await query(started.connection_string, 'create table ledger (id int primary key)');
  ledger = new Ledger(started.connection_string);
  ledger.start();
  await ledger.resumed();
});
supervision.after(async () => {
  await ledger?.stop();
  await cleanup(dir);
});

/** Inject a fault, wait until writes resume (at most 60 s), give them a few healthy seconds, record the gap. */
async function fault(kind: string, inject: () => Promise<void>): Promise<void> {
  const at = Date.now();
  await inject();
  await ledger!.resumed(20, 60_000);
  await sleep(3000);
  (gaps[kind] ??= []).push(ledger!.longestGap(at, Date.now()));
}

supervision('a compute killed again and again comes back every time', async () => {
  for (let i = 0; i < 3; i++) {
    const before = await pidOf('main');
    await fault('compute SIGKILL', async () => void process.kill(before, 'SIGKILL'));
    const info = await waitFor('main running again', async () => {
      const pg = await run(['pg', 'show', '-n', 'main']);
      return pg.state === 'running' && pg.pid !== before && pg;
    });
    assert.ok(info.restarts >= i + 1, `restarts counted (${info.restarts})`);
  }
});

supervision('a killed safekeeper is restarted and commits go on', async () => {
  for (let i = 0; i < 2; i++) {
    const [sk] = await run(['safekeeper', 'list']);
    await fault('safekeeper SIGKILL', async () => void process.kill(sk.pid, 'SIGKILL'));
    await waitFor('sk1 back', async () => (await run(['safekeeper', 'list']))[0].pid !== sk.pid);
  }
});

supervision('a SIGKILLed daemon is replaced by its watchdog; the compute is adopted, not restarted', async () => {
  for (let i = 0; i < 2; i++) {
    const daemon = await daemonPid();
    const compute = await pidOf('main');
    await fault('daemon SIGKILL', async () => void process.kill(daemon, 'SIGKILL'));
    await waitFor('a new daemon', async () => (await daemonPid()) !== daemon && (await neon(['status'], { cwd: dir })).code === 0);
    assert.is(await pidOf('main'), compute, 'the same postmaster serves on');
    // The replacement keeps the daemon's malloc setting (lib/proc.ts DAEMON_ENV), which holds its memory down.
    const environ = fs.readFileSync(`/proc/${await daemonPid()}/environ`, 'utf8').split('\0');
    assert.ok(environ.includes('MALLOC_MMAP_THRESHOLD_=131072'), 'the restarted daemon has DAEMON_ENV');
  }
});

supervision('no acknowledged commit is lost; the write gaps per fault kind', async () => {
  await ledger!.stop();
  const main = await run(['pg', 'show', '-n', 'main']);
  const rows = await query<{ id: number }>(main.connection_string, 'select id from ledger');
  const present = new Set(rows.map((r) => r.id));
  const lost = ledger!.acked.filter((id) => !present.has(id));
  assert.equal(lost, [], `${lost.length} acknowledged row(s) lost`);
  console.log(`\n  ${ledger!.acked.length} commits acknowledged, 0 lost. Longest write unavailability per fault kind:`);
  for (const [kind, list] of Object.entries(gaps)) {
    console.log(`    ${kind.padEnd(18)} max ${Math.max(...list)} ms  (each: ${list.join(', ')} ms)`);
  }
});

supervision('neon start on a running repository repairs a compute that keeps failing, and says so', async () => {
  const pgdata = path.join(dir, '.neon', 'computes', 'main', 'pgdata');
  // Postgres refuses a data directory others can read: every restart fails until the mode is put back.
  fs.chmodSync(pgdata, 0o755);
  process.kill(await pidOf('main'), 'SIGKILL');
  const down = await waitFor(
    'main failing with a long pause before its next attempt',
    async () => {
      const pg = await run(['pg', 'show', '-n', 'main']);
      return pg.state === 'restarting' && pg.next_restart_at && Date.parse(pg.next_restart_at) - Date.now() > 6000 && pg;
    },
    120_000,
  );
  assert.ok(down.restarts >= 3, 'it was retried with backoff');
  const status = await run(['status']);
  assert.ok(
    status.problems.some((p: { component: string }) => p.component === 'compute main'),
    'status shows the problem',
  );
  fs.chmodSync(pgdata, 0o700);
  const start = await neon(['start'], { cwd: dir });
  assert.is(start.code, 0, start.stderr);
  assert.match(start.stdout, /Repaired compute main: started \(was restarting\)/);
  assert.is((await run(['pg', 'show', '-n', 'main'])).state, 'running');
  const again = await neon(['start'], { cwd: dir });
  assert.match(again.stdout, /already running\. Nothing needed repair\./);
});

supervision('neon stop leaves no process behind, the watchdog included', async () => {
  const stopped = await neon(['stop'], { cwd: dir });
  assert.is(stopped.code, 0, stopped.stderr);
  await waitFor('nothing running', () => processesOf(dir).length === 0, 10_000).catch((error) => {
    const left = processesOf(dir).map((pid) => `${pid}: ${fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ')}`);
    throw new Error(`${error.message}; still running: ${left.join('; ')}`);
  });
});

supervision.run();
