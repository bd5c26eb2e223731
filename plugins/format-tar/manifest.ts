/**
 * Postgres' backup manifest (src/backend/backup/backup_manifest.c, src/common/parse_manifest.c), version 1: one
 * JSON object, one file per line, WAL ranges, and a SHA256 of all the text before the "Manifest-Checksum" line.
 */
import { createHash } from 'node:crypto';
import { NeonError } from '../../core/errors.js';
import { formatLsn } from '../../core/format.js';

export interface ManifestFile {
  path: string;
  size: number;
  mtime: Date;
  algorithm: 'SHA256' | 'CRC32C' | 'NONE' | string;
  checksum?: string;
}

export interface WalRange {
  timeline: number;
  start: bigint;
  end: bigint;
}

/** "2024-01-02 03:04:05 GMT", as pg_basebackup writes Last-Modified. */
const pgTime = (date: Date) => date.toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' GMT');

/** The text of a version 1 manifest. */
export function buildManifest(files: ManifestFile[], ranges: WalRange[]): string {
  let text = '{ "PostgreSQL-Backup-Manifest-Version": 1,\n"Files": [';
  text += files
    .map((f) => {
      const sum = f.algorithm === 'NONE' ? '' : `, "Checksum-Algorithm": "${f.algorithm}", "Checksum": "${f.checksum}"`;
      return `\n{ "Path": ${JSON.stringify(f.path)}, "Size": ${f.size}, "Last-Modified": "${pgTime(f.mtime)}"${sum} }`;
    })
    .join(',');
  text += ' ],\n"WAL-Ranges": [\n';
  text += ranges.map((r) => `{ "Timeline": ${r.timeline}, "Start-LSN": "${formatLsn(r.start)}", "End-LSN": "${formatLsn(r.end)}" }`).join(',\n');
  text += '\n],\n';
  return text + `"Manifest-Checksum": "${createHash('sha256').update(text).digest('hex')}"}\n`;
}

/** Parse a manifest (versions 1 and 2) and check its Manifest-Checksum. */
export function parseManifest(text: string, where: string): { files: Map<string, ManifestFile>; systemId?: string } {
  // The checksum covers everything up to and including the newline before the last line.
  const last = text.endsWith('\n') ? text.lastIndexOf('\n', text.length - 2) : text.lastIndexOf('\n');
  let json: any;
  try {
    json = JSON.parse(text);
  } catch (error) {
    throw new NeonError('bad_backup', `${where} is not valid JSON: ${(error as Error).message}`);
  }
  const version = json['PostgreSQL-Backup-Manifest-Version'];
  if (version !== 1 && version !== 2) throw new NeonError('bad_backup', `${where}: unsupported manifest version ${version}`);
  const expected = json['Manifest-Checksum'];
  const actual = createHash('sha256').update(text.slice(0, last + 1)).digest('hex');
  if (typeof expected !== 'string' || expected.toLowerCase() !== actual) {
    throw new NeonError('bad_backup', `${where}: manifest checksum mismatch (the manifest was changed or cut short)`);
  }
  const files = new Map<string, ManifestFile>();
  for (const entry of json.Files ?? []) {
    const path = entry.Path ?? Buffer.from(entry['Encoded-Path'] ?? '', 'hex').toString('utf8');
    files.set(path, { path, size: Number(entry.Size), mtime: new Date(), algorithm: entry['Checksum-Algorithm'] ?? 'NONE', checksum: entry.Checksum });
  }
  return { files, systemId: json['System-Identifier'] !== undefined ? String(json['System-Identifier']) : undefined };
}

/** A running checksum of one algorithm of the manifest. */
export interface Checksummer {
  update(chunk: Buffer): void;
  digest(): string;
}

export function checksummer(algorithm: string): Checksummer | undefined {
  switch (algorithm) {
    case 'SHA224':
    case 'SHA256':
    case 'SHA384':
    case 'SHA512': {
      const hash = createHash(algorithm.toLowerCase());
      return { update: (chunk) => void hash.update(chunk), digest: () => hash.digest('hex') };
    }
    case 'CRC32C': {
      let crc = 0xffffffff;
      return {
        update(chunk) {
          for (let i = 0; i < chunk.length; i++) crc = CRC32C_TABLE[(crc ^ chunk[i]) & 0xff] ^ (crc >>> 8);
        },
        // pg_basebackup prints the finished CRC's bytes in memory order (little-endian on x86), as hex.
        digest() {
          const out = Buffer.alloc(4);
          out.writeUInt32LE((crc ^ 0xffffffff) >>> 0);
          return out.toString('hex');
        },
      };
    }
    default:
      return undefined;
  }
}

const CRC32C_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0x82f63b78 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();
