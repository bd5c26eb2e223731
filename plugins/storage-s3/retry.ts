import { setTimeout as sleep } from 'node:timers/promises';
import { retryKind } from './errors.js';

/** How {@link withRetry} retries. */
export interface RetryPolicy {
  /** Retries after the first attempt. */
  retries: number;
  /** First backoff ceiling in ms; it doubles with each attempt. */
  baseMs?: number;
  /** Largest backoff ceiling in ms. */
  capMs?: number;
}

/** Attempts allowed for a refused or unresolvable connection: a wrong endpoint should fail in about a second. */
const UNREACHABLE_RETRIES = 2;

/** Filled in by {@link withRetry} for callers that must know whether an earlier attempt may have landed. */
export interface RetryStats {
  attempts: number;
}

/**
 * Run `attempt` until it succeeds, retrying throttling (503 SlowDown, 429), other 5xx and dropped connections with
 * exponential backoff and full jitter (sleep a random time up to base × 2^n, capped), as AWS recommends so that
 * many clients backing off at once do not retry in lockstep. A refused or unresolvable connection is retried only
 * {@link UNREACHABLE_RETRIES} times. Client errors (4xx) are not retried.
 *
 * `attempt` must be safe to repeat: callers pass only bodies they hold in memory (a Buffer, one multipart part),
 * never a stream that a failed attempt consumed. The SDK's own retrying is switched off (maxAttempts 1) so that
 * this policy alone decides and attempts do not multiply.
 */
export async function withRetry<T>(attempt: () => Promise<T>, policy: RetryPolicy, stats?: RetryStats): Promise<T> {
  const base = policy.baseMs ?? 100;
  const cap = policy.capMs ?? 5_000;
  for (let n = 0; ; n++) {
    if (stats) stats.attempts = n + 1;
    try {
      return await attempt();
    } catch (error) {
      const kind = retryKind(error);
      const allowed = kind === 'few' ? Math.min(policy.retries, UNREACHABLE_RETRIES) : kind === 'yes' ? policy.retries : 0;
      if (n >= allowed) throw error;
      await sleep(Math.random() * Math.min(cap, base * 2 ** n));
    }
  }
}
