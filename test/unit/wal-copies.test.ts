import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { safekeeperWalDir } from '../../core/wal.js';
import { localCopies, readCopy, verifyCopies, type WalHolder } from '../../wal/copies.js';

// A safekeeper renames `X.partial` to `X` when it finishes a segment, at any moment: neon verify lists the files
// and then opens them, and used to fail with ENOENT when a rename fell in between.
const test = suite('WAL copies: a segment finished while verify reads it');
const SEGMENT = 1024 * 1024;
const NAME = '000000010000000000000003';
let dir = '';
let holder: WalHolder;
let walDir = '';
test.before.each(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'neon-copies-'));
  fs.writeFileSync(path.join(dir, 'system.json'), JSON.stringify({ segmentSize: SEGMENT }));
  holder = { name: 'sk1', dir, statusOf: () => ({}) };
  walDir = safekeeperWalDir(dir, 'main');
  fs.mkdirSync(walDir, { recursive: true });
  fs.writeFileSync(path.join(walDir, `${NAME}.partial`), Buffer.alloc(SEGMENT, 7));
});
test.after.each(() => fs.rmSync(dir, { recursive: true, force: true }));

test('a listed .partial renamed to its finished name is read under that name', async () => {
  const [copy] = localCopies([holder], 'main');
  assert.is(copy.partial, true);
  fs.renameSync(copy.file, path.join(walDir, NAME));
  const bytes = readCopy(copy);
  assert.is(bytes?.length, SEGMENT);
  assert.is(copy.file, path.join(walDir, NAME));
  assert.is(copy.partial, false);
});

test('verify of copies listed before the rename checks the finished file instead of failing', async () => {
  const copies = localCopies([holder], 'main');
  fs.renameSync(copies[0].file, path.join(walDir, NAME));
  const report = await verifyCopies('main', copies);
  assert.is(report.files, 1, 'the finished file is checked, not skipped');
  assert.is(report.bytes, SEGMENT, 'up to the end of the finished segment');
});

test('a copy gone altogether is skipped, not an error', async () => {
  const copies = localCopies([holder], 'main');
  fs.rmSync(copies[0].file);
  assert.is(readCopy(copies[0]), undefined);
  const report = await verifyCopies('main', copies);
  assert.is(report.files, 0);
});

test.run();
