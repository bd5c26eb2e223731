import fs from 'node:fs';
import path from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { isAlive } from '../../lib/proc.js';
import { cleanup, neonJson, tmpDir } from '../../testkit/env.js';

/**
 * Hostile input on every route of a real daemon: prototype names, `..%2F`, broken percent-encoding, huge and
 * non-finite numbers, deep nesting, wrong types, oversized bodies. Every input is one the daemon must refuse (or
 * answer with "not found"), so the repository must be exactly as before: never a 5xx, never a crash.
 */

const PROTO = ['__proto__', 'constructor', 'toString', 'hasOwnProperty', 'valueOf', 'prototype', '__defineGetter__', 'isPrototypeOf'];
const PATHS = ['..%2F..%2Fstate.json', '..%2Ftoken', '%2E%2E%2Fconfig.json', '..%5C..', 'a%2F..%2F..%2Ftoken', '%00', 'a%00b', '.', '-x'];
const ENCODING = ['%E0%A4%A', '%', '%zz', '%C0%AF', '%FF%FE', 'a%2', '%F0%9F%92%A9', '%20', 'x'.repeat(64), 'y'.repeat(300)];
const NUMBERS = ['1e999', '-1e999', '"Infinity"', '"-Infinity"', '"NaN"', '1e308', '-1', '-0.0001', '36501', '9007199254740993'];
/** Numbers no field takes (not finite, negative, beyond 36500 days). */
const BAD_NUMBERS = ['1e999', '-1e999', '1e308', '-1', '-0.0001', '36501', '9007199254740993'];
/** Values of the wrong type for every field (none is a string that could be a name or a target). */
const WRONG = ['null', '[]', '{}', '[1,2]', '{"a":{"b":{}}}', '"\\u0000"', '"a\\nb"', '""'];

/** Values that no field of any route accepts as a name or a point of history. */
const INVALID_NAMES = ['__proto__', '../x', '..', '', ' ', 'a/b', 'a'.repeat(64), '-lead', '.hidden', 'x\u0000', 'é'];

function rng(seed: number) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Case {
  method: string;
  path: string;
  body?: string;
}

/** Path segments for routes with a `:name`: none of them is an existing resource or a valid name that could be made. */
const SEGMENTS = [...PROTO, ...PATHS, ...ENCODING, ...NUMBERS.map(encodeURIComponent), 'Infinity', 'NaN', 'nope'];

/** A body that is invalid for a route whose body fields are `fields`: a bad value somewhere, or an unknown field. */
function badBody(random: () => number, fields: string[]): string {
  const pick = <T>(list: T[]) => list[Math.floor(random() * list.length)];
  const kind = random();
  if (kind < 0.08) return '['.repeat(1000 + Math.floor(random() * 100_000));
  if (kind < 0.1) return JSON.stringify({ [pick(fields) ?? 'x']: 'z'.repeat(1.1 * 2 ** 20) });
  if (kind < 0.15) return pick(['{', '{"a":', 'nul', '\u0000', '{"a":1,}', "{'a':1}", '[]', '"str"', '42', 'null']);
  if (kind < 0.2) return pick(['{"__proto__":{"polluted":1}}', '{"constructor":{"prototype":{"polluted":1}}}', '{"toString":1}']);
  // A Map, not an object: a "__proto__" key must reach the daemon as a key.
  const body = new Map<string, string>();
  for (const field of fields) if (random() < 0.5) body.set(field, JSON.stringify(pick(INVALID_NAMES)));
  const field = random() < 0.2 || fields.length === 0 ? pick([...PROTO, 'extra', 'action ']) : pick(fields);
  // Values no field accepts: names, actions, targets, booleans, lists and day counts all refuse them.
  const numeric = field === 'keep_wal_days' ? ['"Infinity"', '"NaN"', '"7"', '"-Infinity"'] : [];
  body.set(field, pick([...BAD_NUMBERS, ...numeric, ...WRONG, ...INVALID_NAMES.map((n) => JSON.stringify(n))]));
  if (random() < 0.3) body.set(pick(PROTO), pick(WRONG));
  return `{${[...body].map(([k, v]) => `${JSON.stringify(k)}:${v}`).join(',')}}`;
}

/** References to things that do not exist, in otherwise valid bodies: "not found" or "not a target", nothing made. */
function references(): Case[] {
  const out: Case[] = [];
  for (const p of PROTO) {
    out.push({ method: 'PUT', path: '/pgs', body: JSON.stringify({ name: 'fuzzpg', branch: p }) });
    out.push({ method: 'PUT', path: '/pgs', body: JSON.stringify({ name: 'fuzzpg', at: p, read_only: true }) });
    out.push({ method: 'POST', path: '/branches', body: JSON.stringify({ name: 'fuzzbr', parent: p }) });
    out.push({ method: 'POST', path: '/branches', body: JSON.stringify({ name: 'fuzzbr', at: p }) });
    out.push({ method: 'POST', path: '/checkout', body: JSON.stringify({ target: p }) });
    out.push({ method: 'POST', path: '/verify', body: JSON.stringify({ snapshots: [p] }) });
    out.push({ method: 'POST', path: '/images', body: JSON.stringify({ compute: p }) });
    out.push({ method: 'POST', path: `/pgs/${p}/actions`, body: '{"action":"stop"}' });
    out.push({ method: 'POST', path: `/safekeepers/${p}/actions`, body: '{"action":"stop"}' });
    out.push({ method: 'GET', path: `/wal/main/${p}` });
  }
  return out;
}

/** Every route, with the body fields it knows (none for routes that take no body). */
const ROUTES: { method: string; path: string; fields?: string[] }[] = [
  { method: 'GET', path: '/status' },
  { method: 'GET', path: '/pgs' },
  { method: 'GET', path: '/pgs/:name' },
  { method: 'PUT', path: '/pgs', fields: ['name', 'storage_name', 'branch', 'at', 'read_only', 'is_replica'] },
  { method: 'DELETE', path: '/pgs/:name' },
  { method: 'POST', path: '/pgs/:name/actions', fields: ['action', 'is_replica'] },
  { method: 'POST', path: '/pgs/main/actions', fields: ['action', 'is_replica'] },
  { method: 'GET', path: '/safekeepers' },
  { method: 'GET', path: '/safekeepers/:name' },
  { method: 'POST', path: '/safekeepers/:name/actions', fields: ['action'] },
  { method: 'GET', path: '/wal/:name/000000010000000000000001' },
  { method: 'GET', path: '/wal/main/:name' },
  { method: 'GET', path: '/snapshots' },
  { method: 'POST', path: '/snapshots', fields: ['name'] },
  { method: 'GET', path: '/snapshots/:name' },
  { method: 'DELETE', path: '/snapshots/:name' },
  { method: 'GET', path: '/branches' },
  { method: 'POST', path: '/branches', fields: ['name', 'parent', 'at'] },
  { method: 'DELETE', path: '/branches/:name' },
  { method: 'GET', path: '/images' },
  { method: 'POST', path: '/images', fields: ['compute'] },
  { method: 'POST', path: '/checkout', fields: ['target'] },
  { method: 'GET', path: '/log' },
  { method: 'POST', path: '/verify', fields: ['snapshots'] },
  { method: 'POST', path: '/gc', fields: ['keep_wal_days'] },
  { method: 'POST', path: '/shutdown', fields: [] },
];

/** A few hundred hostile inputs per route. */
function cases(perRoute: number): Case[] {
  const random = rng(20261121);
  const out = references();
  for (const route of ROUTES) {
    for (let i = 0; i < perRoute; i++) {
      const segment = SEGMENTS[Math.floor(random() * SEGMENTS.length)];
      const routePath = route.path.replace(':name', segment);
      if (route.fields) out.push({ method: route.method, path: routePath, body: badBody(random, route.fields) });
      else if (route.path.includes(':name')) out.push({ method: route.method, path: routePath });
      else
        out.push({
          method: route.method,
          path: `${routePath}?${segment}=${segment}`,
          body: route.method !== 'GET' && random() < 0.3 ? badBody(random, []) : undefined,
        });
    }
  }
  return out;
}

const fuzz = suite('every route refuses hostile input without a 5xx or a change');
let dir: string;
let port: number;
let token: string;
let pid: number;

async function send(c: Case): Promise<{ status: number; text: string }> {
  const response = await fetch(`http://127.0.0.1:${port}${c.path}`, {
    method: c.method,
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: c.body,
  });
  return { status: response.status, text: await response.text() };
}

/** What a user sees of the repository: computes (name, branch, state), snapshots and branches. */
async function picture(): Promise<string> {
  const get = async (route: string) => JSON.parse((await send({ method: 'GET', path: route })).text);
  const pgs = (await get('/pgs')).map((p: Record<string, unknown>) => [p.name, p.branch, p.state, p.port]);
  return JSON.stringify({ pgs, snapshots: await get('/snapshots'), branches: await get('/branches') });
}

fuzz.before(async () => {
  dir = tmpDir();
  const out = await neonJson(['start'], { cwd: dir });
  port = out.status.daemon.port;
  pid = out.status.daemon.pid;
  token = fs.readFileSync(path.join(dir, '.neon', 'token'), 'utf8').trim();
  await neonJson(['snapshot', 'create', 'kept'], { cwd: dir });
});
fuzz.after(() => cleanup(dir));

fuzz('a few hundred generated inputs per route: only 4xx, the daemon alive, the repository unchanged', async () => {
  // Made first: the big bodies take a few seconds, long enough for the server to close idle keep-alive sockets.
  const all = cases(200);
  const before = await picture();
  const stateBefore = fs.readFileSync(path.join(dir, '.neon', 'state.json'), 'utf8');
  const failures: string[] = [];
  const statuses = new Map<number, number>();
  const next = all[Symbol.iterator]();
  const worker = async () => {
    for (let item = next.next(); !item.done; item = next.next()) {
      const c = item.value;
      const { status, text } = await send(c).catch((error) => ({ status: 0, text: String(error.cause ?? error) }));
      statuses.set(status, (statuses.get(status) ?? 0) + 1);
      // Reads ignore a query they do not know; everything else is refused.
      const refused = status >= 400 && status < 500;
      if (!refused && !(c.method === 'GET' && status === 200))
        failures.push(`${status} ${c.method} ${c.path} ${c.body?.slice(0, 120) ?? ''} → ${text.slice(0, 200)}`);
    }
  };
  await Promise.all(Array.from({ length: 8 }, worker));
  assert.ok(all.length > 5000, `${all.length} inputs`);
  if (failures.length)
    console.log(
      fs
        .readFileSync(path.join(dir, '.neon', 'logs', 'daemon.log'), 'utf8')
        .split('\n')
        .slice(-40)
        .join('\n'),
    );
  assert.equal(failures.slice(0, 10), [], `${failures.length} of ${all.length} inputs were not refused with a 4xx`);
  assert.ok(isAlive(pid), 'the daemon is alive');
  assert.is((await send({ method: 'GET', path: '/status' })).status, 200);
  assert.is(await picture(), before);
  assert.is(fs.readFileSync(path.join(dir, '.neon', 'state.json'), 'utf8'), stateBefore);
  assert.equal(({} as Record<string, unknown>).polluted, undefined);
  console.log(`fuzz: ${all.length} inputs, statuses ${JSON.stringify(Object.fromEntries(statuses))}`);
});

fuzz.run();
