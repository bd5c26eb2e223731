import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { processesIn, processesMatching, signal, waitGone } from '../lib/proc.js';

/** The repository root (where package.json is). */
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
/** The built CLI, as `npx neon` runs it. */
export const CLI = path.join(ROOT, 'dist/cli/bin.js');

/** A fresh folder under the system temp dir, reachable by other users (the Postgres user must get in). */
export function tmpDir(prefix = 'neon-test-'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  fs.chmodSync(dir, 0o755);
  return dir;
}

/** Result of one CLI run. */
export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Options of {@link neon}. */
export interface RunOptions {
  cwd: string;
  env?: Record<string, string>;
  /** Run the CLI as this user (tests run as root drive neon as a normal user too). */
  uid?: number;
  gid?: number;
}

/** Run `neon …args` and collect its output; never throws on a non-zero exit. */
export async function neon(args: string[], options: RunOptions): Promise<CliResult> {
  const result = await execa(process.execPath, [CLI, ...args], {
    cwd: options.cwd,
    env: { NEON_REPO_DIR: '', ...options.env },
    uid: options.uid,
    gid: options.gid,
    reject: false,
    stdin: 'ignore',
  });
  return { code: result.exitCode ?? -1, stdout: String(result.stdout), stderr: String(result.stderr) };
}

/** Run `neon …args --json` expecting success; returns the parsed output. */
export async function neonJson<T = any>(args: string[], options: RunOptions): Promise<T> {
  const result = await neon([...args, '--json'], options);
  if (result.code !== 0) throw new Error(`neon ${args.join(' ')} exited ${result.code}: ${result.stderr}`);
  return JSON.parse(result.stdout) as T;
}

/** True while process `pid` exists (signal 0 only asks). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Every process that belongs to a test folder: started with it in the command line, or running inside it. */
export function processesOf(dir: string): number[] {
  const pids = new Set(processesMatching(dir));
  for (const sub of walkDirs(dir)) for (const pid of processesIn(sub)) pids.add(pid);
  return [...pids];
}

function walkDirs(dir: string, depth = 4): string[] {
  if (depth === 0 || !fs.existsSync(dir)) return [];
  const out = [dir];
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    if (entry.isDirectory()) out.push(...walkDirs(path.join(dir, entry.name), depth - 1));
  }
  return out;
}

/** Kill whatever a test left running in `dir` and remove the folder. */
export async function cleanup(dir: string): Promise<void> {
  // Again until none is left: a process started between the listing and the kill (a Postgres the daemon was
  // spawning, a backend its postmaster forked) would go on writing while the folder is removed.
  for (let round = 0; round < 5; round++) {
    const pids = processesOf(dir);
    if (!pids.length) break;
    for (const pid of pids) signal(pid, 'SIGKILL');
    await waitGone(pids, 10_000);
  }
  // NEON_TEST_KEEP=1 keeps the folder (logs, data directories) to look into a failure; the processes are gone.
  if (process.env.NEON_TEST_KEEP !== '1') fs.rmSync(dir, { recursive: true, force: true });
}
