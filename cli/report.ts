import { isExpected, messageOf, NeonError } from '../core/errors.js';

/** Print `value` as JSON with --json, else the human text. */
export function print(options: { json?: boolean }, value: unknown, human: () => string): void {
  console.log(options.json ? JSON.stringify(value, null, 2) : human());
}

/** A failed command: expected errors print one line, others their stack; both exit non-zero. */
export function reportError(error: unknown, argv: string[]): void {
  const expected = isExpected(error) || (error as Error)?.name === 'CACError';
  if (argv.includes('--json')) {
    // Scripts parse stderr too: the same { code, message } the REST API answers with.
    const code = error instanceof NeonError ? error.code : expected ? 'bad_usage' : 'internal';
    console.error(JSON.stringify({ code, message: messageOf(error) }));
  } else if (expected && !process.env.NEON_DEBUG) {
    // NEON_DEBUG=1 prints where an expected error came from too.
    console.error(`neon: ${messageOf(error)}`);
  } else {
    console.error((error as Error)?.stack ?? error);
  }
  process.exitCode = 1;
}
