import { randomUUID } from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import { NeonError, messageOf } from '../core/errors.js';
import { readJson, writeFileAtomic } from '../core/fs-atomic.js';
import type { NeonHooks } from '../core/hooks.js';
import type { Logger } from '../core/log.js';
import { readObject, type Storage } from '../core/storage.js';
import { isAlive } from '../lib/proc.js';
import { acceptsOf, FencedStorage, type ClaimRecord } from './fenced-storage.js';

export type { ClaimHolder, ClaimRecord } from './fenced-storage.js';

/*
 * One writer per storage_dest. The writer holds a generation: `claims/<generation>.json` (written once, with a
 * conditional create where the store has one) names the holder; the highest generation is the current one. The
 * holder refreshes `claims/<generation>.heartbeat` (its own key, so a stale writer can never overwrite a newer
 * claim) and looks at the claims before it writes; once a higher generation exists it writes nothing more.
 * Everything a writer produces that two writers could both produce carries its generation in the key (see
 * fenced-storage.ts), and a take-over records which of the older generations' objects it accepts, so a stale
 * writer's late objects are never read as current even on a store without conditional writes.
 */

/** `claims/<generation>.heartbeat`. */
interface Heartbeat {
  at: string;
  pid: number;
  /** Set by a clean stop: a stopped holder is not dead, it may start again. */
  stopped?: boolean;
}

/** `<repo>/claim.json`: which generation of which storage this repository holds. */
interface LocalClaim {
  storage: string;
  id: string;
  generation: number;
}

/** Options of {@link planClaim}. */
export interface ClaimOptions {
  repoDir: string;
  /** `neon start --take-over`: take the storage from a holder that is not known to be dead. */
  takeOver?: boolean;
  /** A holder whose heartbeat is older than this (and that did not stop cleanly) is dead (default 60 s). */
  staleSeconds?: number;
}

/** What {@link planClaim} decided, before anything is written. */
export interface ClaimPlan {
  storage: Storage;
  repoDir: string;
  claims: ClaimRecord[];
  /** The generation this repository already holds, when it is the current one. */
  held?: LocalClaim;
}

const PREFIX = 'claims/';
const HEARTBEAT_MS = 3000;
const CHECK_MS = 1000;
const claimKey = (generation: number) => `${PREFIX}${String(generation).padStart(10, '0')}.json`;
const heartbeatKey = (generation: number) => `${PREFIX}${String(generation).padStart(10, '0')}.heartbeat`;
const localFile = (repoDir: string) => path.join(repoDir, 'claim.json');

/** Every claim of a storage, oldest first. */
export async function readClaims(storage: Storage): Promise<ClaimRecord[]> {
  const claims: ClaimRecord[] = [];
  for await (const object of storage.list(PREFIX)) {
    if (!/^claims\/\d{10}\.json$/.test(object.key)) continue;
    claims.push(JSON.parse((await readObject(storage, object.key)).toString('utf8')) as ClaimRecord);
  }
  return claims.sort((a, b) => a.generation - b.generation);
}

async function readHeartbeat(storage: Storage, generation: number): Promise<Heartbeat | undefined> {
  if (!(await storage.head(heartbeatKey(generation)))) return undefined;
  return JSON.parse((await readObject(storage, heartbeatKey(generation))).toString('utf8')) as Heartbeat;
}

/** One line naming a holder, for errors. */
function describe(claim: ClaimRecord, beat: Heartbeat | undefined): string {
  const seen = beat ? `, last heartbeat ${Math.round((Date.now() - Date.parse(beat.at)) / 1000)}s ago${beat.stopped ? ' (stopped)' : ''}` : '';
  return `repository ${claim.holder.repository} on host ${claim.holder.host} (pid ${beat?.pid ?? 'unknown'}, since ${claim.since}, generation ${claim.generation}${seen})`;
}

/**
 * Decide whether this repository may write to `storage`, writing nothing: it holds the current claim, or there is
 * none, or the holder is dead (this very repository folder recreated while its process is gone, or a heartbeat
 * older than `staleSeconds` without a clean stop), or `takeOver` is set. Otherwise fails with `claim_held`
 * naming the holder; a repository whose claim was taken over fails with `claim_lost` unless `takeOver`.
 */
export async function planClaim(storage: Storage, options: ClaimOptions): Promise<ClaimPlan> {
  const claims = await readClaims(storage);
  const local = await readJson<LocalClaim>(localFile(options.repoDir)).catch(() => undefined);
  const mine = local?.storage === storage.url ? local : undefined;
  const current = claims.at(-1);
  const plan: ClaimPlan = { storage, repoDir: options.repoDir, claims };
  if (!current) return plan;
  if (mine && current.holder.id === mine.id) return { ...plan, held: mine };
  if (options.takeOver) return plan;
  const beat = await readHeartbeat(storage, current.generation);
  if (mine) {
    throw new NeonError(
      'claim_lost',
      `${storage.url} was taken over by ${describe(current, beat)}; this repository no longer writes there. Run \`neon start --take-over\` to make it the writer again (the other repository's later history stays in storage but stops being current)`,
      { status: 409 },
    );
  }
  const sameFolder = current.holder.host === os.hostname() && current.holder.repository === path.resolve(options.repoDir);
  const gone = !beat || !isAlive(beat.pid);
  const stale = !beat || (!beat.stopped && Date.now() - Date.parse(beat.at) > (options.staleSeconds ?? (Number(process.env.NEON_CLAIM_STALE_SECONDS) || 60)) * 1000);
  if ((sameFolder && gone) || stale) return plan;
  throw new NeonError(
    'claim_held',
    `${storage.url} is in use by ${describe(current, beat)}: one repository writes to a storage_dest at a time. Stop it there, use another storage_dest, or pass --take-over if it is gone for good`,
    { status: 409 },
  );
}

/**
 * Carry out a plan: keep the generation this repository holds, or write the next generation's claim (recording
 * what of the older generations it takes over) and `<repo>/claim.json`. Fails with `claim_held` when another
 * repository claimed the same generation at the same moment.
 */
export async function takeClaim(plan: ClaimPlan, log?: Logger): Promise<Claim> {
  const { storage, repoDir, claims } = plan;
  if (plan.held) {
    const claim = new Claim(storage, plan.held.generation, claims, repoDir, log);
    await claim.beat();
    return claim;
  }
  const current = claims.at(-1);
  const generation = (current?.generation ?? 0) + 1;
  const id = randomUUID();
  const record: ClaimRecord = {
    generation,
    holder: { id, host: os.hostname(), repository: path.resolve(repoDir) },
    since: new Date().toISOString(),
    accepts: current ? await acceptsOf(storage, current.generation, claims) : {},
  };
  await storage.put(claimKey(generation), JSON.stringify(record, null, 2), { ifAbsent: true }).catch((error) => {
    if (error instanceof NeonError && error.code === 'conflict') throw raced(storage);
    throw error;
  });
  // A store without conditional writes keeps the last of two racing creates: read back whose it is.
  const back = JSON.parse((await readObject(storage, claimKey(generation))).toString('utf8')) as ClaimRecord;
  if (back.holder.id !== id) throw raced(storage);
  await writeFileAtomic(localFile(repoDir), JSON.stringify({ storage: storage.url, id, generation } satisfies LocalClaim) + '\n', 0o600);
  const claim = new Claim(storage, generation, [...claims, record], repoDir, log);
  await claim.beat();
  return claim;
}

function raced(storage: Storage): NeonError {
  return new NeonError('claim_held', `another repository claimed ${storage.url} at the same moment: try again, or use another storage_dest`, {
    status: 409,
  });
}

/**
 * A held generation of a storage: refreshes the heartbeat, notices a take-over, and hands out the storage view
 * that writes under this generation and refuses to write once the claim is lost.
 */
export class Claim {
  private timer?: NodeJS.Timeout;
  private checkedAt = 0;
  private checking?: Promise<void>;
  private lostTo?: string;
  /** The storage as this generation reads and writes it. */
  readonly storage: FencedStorage;

  constructor(
    readonly raw: Storage,
    readonly generation: number,
    claims: ClaimRecord[],
    readonly repoDir: string,
    private readonly log?: Logger,
  ) {
    this.storage = new FencedStorage(raw, generation, claims, () => this.ensure());
  }

  /** Refresh the heartbeat every few seconds (and look for a take-over) until {@link stop}. */
  start(): void {
    this.timer ??= setInterval(() => void this.beat().catch((error) => this.log?.warn('claim heartbeat failed: %s', messageOf(error))), HEARTBEAT_MS);
    this.timer.unref();
  }

  /** Stop the heartbeat and say that the holder stopped cleanly (it is not dead: it may start again). */
  async stop(): Promise<void> {
    clearInterval(this.timer);
    this.timer = undefined;
    if (!this.lostTo) await this.writeHeartbeat(true).catch(() => undefined);
  }

  /** Why writes are refused, once the claim is lost. */
  get lost(): string | undefined {
    return this.lostTo;
  }

  /** Write the heartbeat, after checking that the claim is still ours. */
  async beat(): Promise<void> {
    await this.check();
    if (!this.lostTo) await this.writeHeartbeat(false);
  }

  private writeHeartbeat(stopped: boolean): Promise<void> {
    const beat: Heartbeat = { at: new Date().toISOString(), pid: process.pid, ...(stopped ? { stopped } : {}) };
    return this.raw.put(heartbeatKey(this.generation), JSON.stringify(beat));
  }

  /** Throws `claim_lost` when a newer generation exists (looked up at most once a second). */
  async ensure(): Promise<void> {
    if (!this.lostTo && Date.now() - this.checkedAt > CHECK_MS) await this.check();
    if (this.lostTo) throw new NeonError('claim_lost', this.lostTo, { status: 409 });
  }

  private check(): Promise<void> {
    this.checking ??= (async () => {
      try {
        const newest = (await readClaims(this.raw)).at(-1);
        this.checkedAt = Date.now();
        if (newest && newest.generation > this.generation) {
          const beat = await readHeartbeat(this.raw, newest.generation).catch(() => undefined);
          this.lostTo = `${this.raw.url} was taken over by ${describe(newest, beat)}: this repository stopped writing there`;
          clearInterval(this.timer);
          this.log?.error('%s', this.lostTo);
        }
      } finally {
        this.checking = undefined;
      }
    })();
    return this.checking;
  }
}

/**
 * Plan and take the claim in one step (the daemon's start), keep it fresh while the daemon runs, and mark it
 * stopped when the daemon stops. `neon start --take-over` reaches the daemon as NEON_TAKE_OVER=1.
 */
export async function claimStorage(storage: Storage, options: ClaimOptions & { log?: Logger; hooks?: NeonHooks }): Promise<Claim> {
  const takeOver = options.takeOver ?? process.env.NEON_TAKE_OVER === '1';
  const claim = await takeClaim(await planClaim(storage, { ...options, takeOver }), options.log);
  claim.start();
  options.hooks?.stop.tapPromise('neon:claim', () => claim.stop());
  return claim;
}
