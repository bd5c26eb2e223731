import pg from 'pg';
import { setTimeout as sleep } from 'node:timers/promises';

// The chaos suite's workload: each transaction inserts one unique id, and the client records it as acknowledged
// only after COMMIT returned. An id whose commit failed midway (the connection died) may or may not be in the
// database: it is "uncertain", never counted as lost or duplicated. Ids are never reused, so a duplicate can
// only come from the database (the table has no unique constraint on purpose: we want to see duplicates).

/** What a writer saw. */
export interface LedgerResult {
  client: string;
  acknowledged: number[];
  uncertain: number[];
  /** Wall-clock times (ms) of acknowledged commits, in order: gaps between them are write unavailability. */
  commitTimes: number[];
}

/** Create the ledger table on a compute. */
export async function createLedger(url: string): Promise<void> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    await client.query('create table if not exists ledger (id bigint not null, client text not null)');
  } finally {
    await client.end();
  }
}

/** A writer that inserts ids until stopped, reconnecting through every fault. */
export class LedgerWriter {
  private stopping = false;
  private done?: Promise<void>;
  readonly result: LedgerResult;
  private next = 1;

  constructor(
    private readonly url: () => string,
    client: string,
    /** A commit that takes longer than this is abandoned as uncertain (a hang is what we measure, not wait out). */
    private readonly commitTimeoutMs = 60_000,
  ) {
    this.result = { client, acknowledged: [], uncertain: [], commitTimes: [] };
  }

  start(): this {
    this.done = this.loop();
    return this;
  }

  async stop(): Promise<LedgerResult> {
    this.stopping = true;
    await this.done;
    return this.result;
  }

  private async loop(): Promise<void> {
    while (!this.stopping) {
      const client = new pg.Client({ connectionString: this.url(), query_timeout: this.commitTimeoutMs, connectionTimeoutMillis: 5_000 });
      client.on('error', () => undefined);
      try {
        await client.connect();
      } catch {
        await sleep(200);
        continue;
      }
      try {
        while (!this.stopping) {
          const id = this.next++;
          try {
            await client.query('insert into ledger (id, client) values ($1, $2)', [id, this.result.client]);
          } catch (error) {
            this.result.uncertain.push(id);
            throw error;
          }
          this.result.acknowledged.push(id);
          this.result.commitTimes.push(Date.now());
        }
      } catch {
        await sleep(100);
      } finally {
        await client.end().catch(() => undefined);
      }
    }
  }
}

/** What the database holds for one client: ids in ledger order, and how often each appears. */
export async function readLedger(url: string, client: string): Promise<Map<number, number>> {
  const db = new pg.Client({ connectionString: url });
  await db.connect();
  try {
    const { rows } = await db.query('select id, count(*)::int as n from ledger where client = $1 group by id', [client]);
    return new Map(rows.map((row: { id: string; n: number }) => [Number(row.id), row.n]));
  } finally {
    await db.end();
  }
}

/** Compare what was acknowledged with what is stored: lost ids and duplicated ids. */
export function audit(result: LedgerResult, stored: Map<number, number>): { lost: number[]; duplicated: number[] } {
  const lost = result.acknowledged.filter((id) => !stored.has(id));
  const duplicated = [...stored].filter(([, n]) => n > 1).map(([id]) => id);
  return { lost, duplicated };
}

/**
 * A snapshot's ledger must be a prefix of the final one: for each client, every acknowledged id below the highest
 * id it holds is there too (uncertain ids may be missing), and it holds nothing the final ledger lacks.
 */
export function isPrefix(result: LedgerResult, atSnapshot: Map<number, number>, final: Map<number, number>): string | undefined {
  const extra = [...atSnapshot.keys()].filter((id) => !final.has(id));
  if (extra.length) return `${extra.length} id(s) in the snapshot are not in the final ledger (first ${extra[0]})`;
  const top = Math.max(0, ...atSnapshot.keys());
  const hole = result.acknowledged.find((id) => id < top && !atSnapshot.has(id));
  return hole === undefined ? undefined : `acknowledged id ${hole} is missing below the snapshot's highest id ${top}`;
}
