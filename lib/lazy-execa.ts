import type { Options, Result } from 'execa';

/**
 * `execa(file, args, options)`, with the package loaded on the first call instead of at start-up: execa and its
 * dependencies are ~160 modules, and the daemon's path to spawning Postgres imports the modules that use it
 * (bench/startup.ts). Only the awaited result is offered: callers that pipe or kill the subprocess import execa.
 */
export async function execa(file: string, args: readonly string[], options?: Options): Promise<Result> {
  const loaded = await import('execa');
  return (await loaded.execa(file, args, options ?? {})) as Result;
}
