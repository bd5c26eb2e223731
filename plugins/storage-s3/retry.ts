import { retryKind } from './errors.js';

/** How the client retries (see {@link retryStrategy}). */
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

/** The SDK's retry token (`RetryToken` of @smithy/types), structurally. */
interface Token {
  getRetryCount(): number;
  getRetryDelay(): number;
}

/** The SDK's `RetryStrategyV2`, structurally: what `S3Client({ retryStrategy })` takes. */
export interface SdkRetryStrategy {
  acquireInitialRetryToken(scope: string): Promise<Token>;
  refreshRetryTokenForRetry(token: Token, info: { error?: unknown }): Promise<Token>;
  recordSuccess(token: Token): void;
}

const token = (count: number, delay: number): Token => ({ getRetryCount: () => count, getRetryDelay: () => delay });

/**
 * The plugin's retry policy as the SDK's retry strategy, so that it applies to every request the client sends,
 * the parts of a `lib-storage` multipart upload included: throttling (503 SlowDown, 429), other 5xx and dropped
 * connections are retried with exponential backoff and full jitter (a random wait up to base × 2^n, capped), as
 * AWS recommends so that many clients backing off at once do not retry in lockstep. A refused or unresolvable
 * connection is retried only {@link UNREACHABLE_RETRIES} times. Client errors (4xx) are not retried.
 *
 * The SDK retries only requests whose body it can resend (Buffers; lib-storage cuts streams into Buffer parts).
 * A refused retry leaves `$metadata.attempts` on the error, which tells a conditional put whether an earlier
 * attempt may have landed.
 */
export function retryStrategy(policy: RetryPolicy): SdkRetryStrategy {
  const base = policy.baseMs ?? 100;
  const cap = policy.capMs ?? 5_000;
  return {
    acquireInitialRetryToken: async () => token(0, 0),
    async refreshRetryTokenForRetry(previous, info) {
      const n = previous.getRetryCount();
      const kind = retryKind(info.error);
      const allowed = kind === 'few' ? Math.min(policy.retries, UNREACHABLE_RETRIES) : kind === 'yes' ? policy.retries : 0;
      if (n >= allowed) throw info.error ?? new Error('not retried');
      return token(n + 1, Math.random() * Math.min(cap, base * 2 ** n));
    },
    recordSuccess: () => undefined,
  };
}

/** How many attempts the SDK made before it gave up with `error` (1 when unknown). */
export function attemptsOf(error: unknown): number {
  return (error as { $metadata?: { attempts?: number } })?.$metadata?.attempts ?? 1;
}
