// Reading a stopped repository's images and their plain copies from a test, the way the pageserver lays them out.
import fs from 'node:fs';
import path from 'node:path';
import { parseLsn } from '../core/wal.js';
import { decodeManifest, imageKey, type ImageManifest } from '../pageserver/manifest.js';

/** The manifests of a branch's images in `<repo>/.neon`, oldest first. */
export async function manifestsOf(neonDir: string, branch = 'main'): Promise<ImageManifest[]> {
  const dir = path.join(neonDir, 'pageserver', 'images', branch);
  const names = fs.readdirSync(dir).sort();
  return Promise.all(names.map((name) => decodeManifest(`images/${branch}/${name}`, fs.readFileSync(path.join(dir, name)))));
}

/** The store key of an image. */
export const keyOf = (manifest: ImageManifest): string => imageKey(manifest.branch, parseLsn(manifest.endLsn));

/** The folder of an image's plain copy (image-cache.ts folderOf). */
export function cachedCopyOf(neonDir: string, manifest: ImageManifest): string {
  return path.join(
    neonDir,
    'pageserver',
    'cache',
    keyOf(manifest)
      .replace(/\//g, '_')
      .replace(/\.json\.gz$/, ''),
  );
}

/**
 * Every entry under `root` as path → "mode content" (files' bytes in base64, symlinks' targets), without the
 * cache's `.complete` marker: two trees are the same data directory when these maps are equal.
 */
export function treeOf(root: string): Map<string, string> {
  const found = new Map<string, string>();
  for (const entry of fs.readdirSync(root, { withFileTypes: true, recursive: true })) {
    const full = path.join(entry.parentPath, entry.name);
    const what = entry.isFile() ? fs.readFileSync(full).toString('base64') : entry.isSymbolicLink() ? fs.readlinkSync(full) : 'dir';
    found.set(path.relative(root, full), `${(fs.lstatSync(full).mode & 0o7777).toString(8)} ${what}`);
  }
  found.delete('.complete');
  return found;
}
