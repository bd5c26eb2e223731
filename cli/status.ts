import { callDaemon } from './client.js';
import { runningDaemonPid } from './daemon-control.js';
import { keyValues, table } from './output.js';
import type { Repository } from '../daemon/repository.js';
import type { Status } from '../daemon/routes.js';

/** The CLI's printer: JSON with --json, else the human text. */
type Print = (options: { json?: boolean }, value: unknown, human: () => string) => void;

/** What the safekeeper-offload plugin adds to the status. */
interface OffloadStatus {
  last_segment: string | null;
  pending: number;
  error: string | null;
}

export function statusText(status: Status & { offload?: OffloadStatus }): string {
  const { daemon, postgres, offload } = status;
  // A safekeeper's "last offloaded" is the newest offloaded segment it has itself completed.
  const offloaded = (last: string | null) => (offload?.last_segment && last && offload.last_segment <= last ? offload.last_segment : null);
  const safekeepers = status.safekeepers.map((sk) => ({
    ...sk,
    last_offloaded: offloaded(sk.last_segment),
    connected: sk.connected ? 'yes' : 'no',
  }));
  return [
    keyValues([
      ['repository', status.repository],
      ['daemon', `running, pid ${daemon.pid}, ${daemon.url}`],
      ['postgres', `${postgres.version} (${postgres.source}: ${postgres.bin_dir}), runs as ${postgres.run_as}`],
      ['storage_dest', status.storage_dest],
      ...(offload
        ? [
            [
              'offload',
              `last ${offload.last_segment ?? '-'}, ${offload.pending} pending${offload.error ? `, error: ${offload.error}` : ''}`,
            ] as [string, string],
          ]
        : []),
    ]),
    ...(status.problems?.length
      ? ['', ...status.problems.map((p) => `PROBLEM ${p.component}: ${p.message}`)]
      : ['', 'healthy: no problems']),
    '',
    table(status.components, [
      ['kind', 'kind'],
      ['name', 'name'],
      ['state', 'state'],
      ['pid', 'pid'],
      ['port', 'port'],
      ['restarts', 'restarts'],
    ]),
    ...(safekeepers.length
      ? [
          '',
          table(safekeepers, [
            ['name', 'safekeeper'],
            ['connected', 'connected'],
            ['flush_lsn', 'flush lsn'],
            ['lag_bytes', 'lag bytes'],
            ['last_segment', 'last segment'],
            ['last_offloaded', 'last offloaded'],
            ['error', 'error'],
          ]),
        ]
      : []),
  ].join('\n');
}

/** `neon status`: the daemon's view, or the repository's when it is stopped. */
export async function statusCommand(repo: Repository, options: { json?: boolean }, print: Print): Promise<void> {
  if (runningDaemonPid(repo) === undefined) {
    const meta = await repo.readMeta();
    const state = await repo.readState();
    const computes = Object.values(state.computes).map((c) => ({ kind: 'compute', name: c.name, state: 'stopped', port: c.port }));
    const value = {
      running: false,
      repository: repo.dir,
      postgres: meta.postgres,
      storage_dest: meta.storageDest ?? null,
      components: computes,
    };
    print(options, value, () =>
      [
        keyValues([
          ['repository', repo.dir],
          ['daemon', 'not running (neon start)'],
          ['postgres', `${meta.postgres.fullVersion} (${meta.postgres.source}: ${meta.postgres.binDir})`],
          ['storage_dest', meta.storageDest],
        ]),
        '',
        table(computes, [
          ['kind', 'kind'],
          ['name', 'name'],
          ['state', 'state'],
          ['port', 'port'],
        ]),
      ].join('\n'),
    );
    return;
  }
  const status = await callDaemon<Status>(repo, 'GET', '/status');
  print(options, { running: true, ...status }, () => statusText(status));
}

