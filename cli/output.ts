import type { Wire } from '../core/rest.js';
import type { Branch } from '../pageserver/history.js';

/** A column of a table: the row key and its heading. */
export type Column = [key: string, heading: string];

function cell(value: unknown): string {
  if (value === null || value === undefined || value === '') return '-';
  return String(value);
}

/** Rows as an aligned plain-text table, headings in capitals. */
export function table(rows: Record<string, unknown>[], columns: Column[]): string {
  const cells = [columns.map(([, heading]) => heading.toUpperCase()), ...rows.map((row) => columns.map(([key]) => cell(row[key])))];
  const widths = columns.map((_, i) => Math.max(...cells.map((line) => line[i].length)));
  return cells.map((line) => line.map((text, i) => (i === line.length - 1 ? text : text.padEnd(widths[i]))).join('  ')).join('\n');
}

/** Pairs as aligned `key  value` lines. */
export function keyValues(pairs: [string, unknown][]): string {
  const width = Math.max(...pairs.map(([key]) => key.length));
  return pairs.map(([key, value]) => `${key.padEnd(width)}  ${cell(value)}`).join('\n');
}

/** Branches as a tree, for `neon branch list`: each under its parent, with its fork point. */
export function branchTree(branches: Wire<Branch>[]): string {
  const lines: string[] = [];
  const walk = (parent: string | null, indent: string) => {
    const children = branches.filter((b) => b.parent === parent).sort((a, b) => (a.created_at < b.created_at ? -1 : 1));
    children.forEach((branch, i) => {
      const last = i === children.length - 1;
      const at = branch.fork_lsn ? ` (at ${branch.fork_lsn})` : branch.fork_time ? ` (at ${branch.fork_time})` : '';
      lines.push(parent === null ? branch.name + at : `${indent}${last ? '└─' : '├─'} ${branch.name}${at}`);
      walk(branch.name, parent === null ? '' : indent + (last ? '   ' : '│  '));
    });
  };
  walk(null, '');
  return lines.join('\n');
}
