import { defineConfig } from 'neon-local';
import launcherCompute from 'neon-local/plugins/launcher-compute';
import launcherSafekeeper from 'neon-local/plugins/launcher-safekeeper';
import safekeeperOffload from 'neon-local/plugins/safekeeper-offload';
import storageFile from 'neon-local/plugins/storage-file';

// The plugins neon uses when there is no config file, spelled out: copy this file to your project and add
// storage backends, backup formats or launchers of your own.
export default defineConfig({
  plugins: [
    storageFile({ fsync: true }),
    launcherCompute(),
    launcherSafekeeper(),
    // Ships safekeeper WAL to storage_dest; partialIntervalMs bounds the commits lost with the whole machine.
    safekeeperOffload({ partialIntervalMs: 1000, retryMaxMs: 10_000, removeLocal: false }),
  ],
  // A commit waits for a majority of the safekeepers to fsync its WAL (1 of 1; 3 gives 2 of 3).
  safekeepers: 1,
  // Background base images: after this much WAL or time, whichever comes first.
  pageserver: { imageAfterMb: 64, imageIntervalMinutes: 10 },
  // postgres.sharedBuffers: default 128MB for main, 32MB for other computes, so that ten fit on a laptop.
  // Where history is kept durably; `neon init --storage_dest=…` overrides it. Unset: only in the repository.
  // storage_dest: 's3://my-bucket/neon',
});
