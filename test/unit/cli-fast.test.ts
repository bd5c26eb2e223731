import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { fastCommand } from '../../cli/fast.js';

// `neon …` as process.argv has it.
const argv = (...args: string[]) => ['/usr/bin/node', '/x/dist/cli/bin.js', ...args];

test('the one-call commands and a plain start skip the command table, with --json and --repo', () => {
  assert.equal(fastCommand(argv('pg', 'list')), { words: 'pg list', json: false, repo: undefined });
  assert.equal(fastCommand(argv('status', '--json')), { words: 'status', json: true, repo: undefined });
  assert.equal(fastCommand(argv('--repo', '/r/.neon', 'log')), { words: 'log', json: false, repo: '/r/.neon' });
  assert.equal(fastCommand(argv('snapshot', 'list', '--repo=/r')), { words: 'snapshot list', json: false, repo: '/r' });
  assert.equal(fastCommand(argv('start', '--json')), { words: 'start', json: true, repo: undefined });
});

test('anything else goes to the full command table, which knows every option and error', () => {
  for (const args of [
    [],
    ['pg'],
    ['pg', 'show', '-n', 'main'],
    ['pg', 'list', '-n', 'main'],
    ['pg', 'list', '--help'],
    ['pg', 'lst'],
    ['log', 'extra'],
    ['start', '--storage_dest', '/s'],
    ['start', '--take-over'],
    ['status', '--repo'],
    ['status', '--repo', '--json'],
    ['status', '--repo='],
    ['status', '--json', '--json'],
    ['--version'],
  ]) {
    assert.is(fastCommand(argv(...args)), undefined, args.join(' '));
  }
});

test.run();
