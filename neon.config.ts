import { defineConfig } from 'neon';
import launcherCompute from 'neon/plugins/launcher-compute';
import storageFile from 'neon/plugins/storage-file';

// The plugins neon uses when there is no config file, spelled out: copy this file to your project and add
// storage backends, backup formats or launchers of your own.
export default defineConfig({
  plugins: [storageFile({ fsync: true }), launcherCompute()],
  postgres: {
    // Modest per-compute memory, so that many computes fit on one laptop.
    sharedBuffers: '128MB',
  },
  // Where history is kept durably; `neon init --storage_dest=…` overrides it. Unset: only in the repository.
  // storage_dest: 's3://my-bucket/neon',
});
