// The short commands that are one REST call and a print (`neon pg list`, `neon status`, …), and a plain
// `neon start`, run without the command table: loading cac and every command's module costs a short call more
// than the call does (bench/startup.ts). Only the exact forms below take this path; anything else (another flag,
// --help, a typo) goes to main.ts, which knows every command and says what is wrong.

/** The commands served here: the words typed, without flags. */
const FAST = new Set(['start', 'pg list', 'safekeeper list', 'snapshot list', 'branch list', 'image list', 'log', 'status']);

/** Which of FAST `argv` asks for, with its `--json` and `--repo`; undefined when it is anything else. */
export function fastCommand(argv: string[]): { words: string; json: boolean; repo?: string } | undefined {
  const words: string[] = [];
  let json = false;
  let repo: string | undefined;
  for (let i = 2; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--json' && !json) json = true;
    else if (arg === '--repo' && repo === undefined && i + 1 < argv.length && !argv[i + 1].startsWith('-')) repo = argv[++i];
    else if (arg.startsWith('--repo=') && repo === undefined && arg.length > 7) repo = arg.slice(7);
    else if (arg.startsWith('-')) return undefined;
    else words.push(arg);
  }
  const command = words.join(' ');
  return FAST.has(command) ? { words: command, json, repo } : undefined;
}

/** Run a command that fastCommand recognised; prints like main.ts does, errors included. */
export async function runFast(command: NonNullable<ReturnType<typeof fastCommand>>, argv: string[], script: string): Promise<void> {
  const [{ Repository, repoDirFrom }, { callDaemon }, { print, reportError }, commands, status] = await Promise.all([
    import('../daemon/repository.js'),
    import('./client.js'),
    import('./report.js'),
    import('./commands.js'),
    command.words === 'status' ? import('./status.js') : undefined,
  ]);
  const repo = new Repository(repoDirFrom(command.repo));
  const call = <T>(method: string, path: string, body?: unknown) => callDaemon<T>(repo, method, path, body);
  const options = { json: command.json };
  try {
    if (status) return await status.statusCommand(repo, options, print);
    // `neon start` without options: the daemon is spawned sooner by the time the command table takes to load.
    if (command.words === 'start') return await commands.startCommand(repo, script, options, print);
    const [noun] = command.words.split(' ');
    if (noun === 'pg') await commands.pgCommand('list', options, call, print);
    else if (noun === 'safekeeper') await commands.safekeeperCommand('list', undefined, call, options, print);
    else if (noun === 'snapshot') await commands.snapshotCommand('list', undefined, call, options, print);
    else if (noun === 'branch') await commands.branchCommand('list', undefined, options, call, print);
    else if (noun === 'image') await commands.imageCommand('list', call, options, print);
    else await commands.logCommand(call, options, print);
  } catch (error) {
    reportError(error, argv);
  }
}
