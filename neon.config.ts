import { defineConfig } from 'neon';
import launcherCompute from 'neon/plugins/launcher-compute';
import launcherSafekeeper from 'neon/plugins/launcher-safekeeper';
import safekeeperOffload from 'neon/plugins/safekeeper-offload';
import storageFile from 'neon/plugins/storage-file';

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
  postgres: {
    // Modest per-compute memory, so that many computes fit on one laptop.
    sharedBuffers: '128MB',
  },
  // Where history is kept durably; `neon init --storage_dest=…` overrides it. Unset: only in the repository.
  // storage_dest: 's3://my-bucket/neon',
});
