// bench/formats: export and import of a loaded database in each format, beside the peer that does the same job.
//   export pgdata / tar / walg   vs  pg_basebackup -Fp / -Ft / -Ft  of the same running compute
//   import pgdata (neon init --snapshot_path)  vs  cp -a of the same folder
// PostgreSQL 15 (Debian) on both sides. Ratios are peer time / neon time: ≥ 1.0 means neon is as fast.
// Targets (issue 11): export ≥ 1.0× pg_basebackup -Ft, import of pgdata ≥ 0.8× cp -a.
//
//   npm run bench:formats [-- --scale 64 --runs 3]
import fs from 'node:fs';
import path from 'node:path';
import { CLI, cleanup, neonJson, tmpDir } from '../testkit/env.js';
import { bin, dbSize, listArg, machine, median, MB, pgbenchInit, run, timed } from './lib-snapshot.js';

const [scale] = listArg('scale', [16]);
const [runs] = listArg('runs', [3]);
const FORMATS = [
  { format: 'pgdata', peer: ['-Fp'] },
  { format: 'tar', peer: ['-Ft'] },
  { format: 'walg', peer: ['-Ft'] },
] as const;

const neonCli = (args: string[], cwd: string) => run(process.execPath, [CLI, ...args], { cwd });

const dir = tmpDir('neon-bench-formats-');
try {
  neonCli(['init', '--pg-version', '15'], dir);
  const started = await neonJson(['start'], { cwd: dir });
  const url: string = started.connection_string;
  pgbenchInit(url, scale);
  const bytes = await dbSize(url);
  console.log(`bench/formats on ${machine()}: pgbench scale ${scale} (${Math.round(bytes / MB)} MB), PostgreSQL 15, ${runs} runs`);
  const rows: string[][] = [];
  for (const { format, peer } of FORMATS) {
    const neonMs: number[] = [];
    const peerMs: number[] = [];
    for (let i = 0; i < runs; i++) {
      const out = path.join(dir, `export-${format}-${i}`);
      const [ms] = await timed(() => neonCli(['export', `--snapshot_path=${out}`, `--snapshot_format=${format}`, '--json'], dir));
      neonMs.push(ms);
      fs.rmSync(out, { recursive: true, force: true });
      const target = path.join(dir, `peer-${format}-${i}`);
      const [pms] = await timed(() => run(bin('pg_basebackup'), ['-d', url, '-D', target, ...peer, '-X', 'stream', '-c', 'fast']));
      peerMs.push(pms);
      fs.rmSync(target, { recursive: true, force: true });
    }
    rows.push([`export ${format}`, `${median(neonMs).toFixed(0)} ms`, `pg_basebackup ${peer[0]} ${median(peerMs).toFixed(0)} ms`, (median(peerMs) / median(neonMs)).toFixed(2)]);
  }
  // Import of a plain data directory: neon init --snapshot_path vs cp -a of the same folder.
  const source = path.join(dir, 'source-pgdata');
  neonCli(['export', `--snapshot_path=${source}`, '--snapshot_format=pgdata', '--json'], dir);
  const importMs: number[] = [];
  const cpMs: number[] = [];
  for (let i = 0; i < runs; i++) {
    const project = path.join(dir, `import-${i}`);
    fs.mkdirSync(project, { mode: 0o755 });
    const [ms] = await timed(() => neonCli(['init', `--snapshot_path=${source}`, '--snapshot_format=pgdata', '--pg-version', '15', '--json'], project));
    importMs.push(ms);
    await cleanup(project);
    const copy = path.join(dir, `copy-${i}`);
    const [cms] = await timed(() => run('cp', ['-a', source, copy]));
    cpMs.push(cms);
    fs.rmSync(copy, { recursive: true, force: true });
  }
  rows.push(['import pgdata', `${median(importMs).toFixed(0)} ms`, `cp -a ${median(cpMs).toFixed(0)} ms`, (median(cpMs) / median(importMs)).toFixed(2)]);
  console.log(['| what | neon | peer | peer ÷ neon |', '|---|---:|---:|---:|', ...rows.map((r) => `| ${r.join(' | ')} |`)].join('\n'));
  neonCli(['stop'], dir);
} finally {
  await cleanup(dir);
}
