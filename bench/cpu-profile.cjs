// Preloaded with NODE_OPTIONS=--require (Node 20 refuses --cpu-prof there) to profile a neon daemon process:
// SIGUSR2 starts the profiler, the next SIGUSR2 writes <NEON_CPU_PROFILE_DIR>/daemon-<pid>-<n>.cpuprofile (open it
// in Chrome DevTools or speedscope), so that a profile covers one transfer and not the daemon's whole life.
// Other processes (the CLI, safekeepers) are left alone.
if (process.argv.includes('__daemon') && process.env.NEON_CPU_PROFILE_DIR) {
  const inspector = require('node:inspector');
  const fs = require('node:fs');
  const path = require('node:path');
  const session = new inspector.Session();
  session.connect();
  session.post('Profiler.enable');
  session.post('Profiler.setSamplingInterval', { interval: 500 });
  let running = false;
  let n = 0;
  process.on('SIGUSR2', () => {
    if (!running) {
      session.post('Profiler.start');
      running = true;
      return;
    }
    running = false;
    session.post('Profiler.stop', (error, result) => {
      const file = path.join(process.env.NEON_CPU_PROFILE_DIR, `daemon-${process.pid}-${++n}.cpuprofile`);
      if (!error) fs.writeFileSync(file, JSON.stringify(result.profile));
    });
  });
}
