import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { createLogger } from '../../core/log.js';
import { RestServer } from '../../core/rest.js';
import { KeyedMutex } from '../../lib/keyed-mutex.js';
import * as schemas from '../../daemon/schemas.js';

const TOKEN = 'test-token';
const server = new RestServer(TOKEN, createLogger('rest-test'));
const seen: unknown[] = [];
const things = new Map([['a', { name: 'a' }]]);
let port = 0;

server
  .route('GET', '/things/:name', async ({ params }) => {
    const found = things.get(params.name);
    if (!found) return { missing: params.name };
    return found;
  })
  .route('POST', '/gc', async ({ body }) => (seen.push(body), { days: body.keep_wal_days ?? 7 }), { body: schemas.Gc })
  .route('POST', '/pgs/:name/actions', async ({ body }) => body, { body: schemas.PgAction })
  .route('GET', '/wal/:branch/:file', async ({ params }) => params, { params: schemas.WalParams })
  .route('POST', '/anything', async ({ body }) => ({ keys: Object.keys(body) }));

async function call(method: string, route: string, body?: string) {
  const response = await fetch(`http://127.0.0.1:${port}${route}`, {
    method,
    headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
    body,
  });
  return { status: response.status, body: (await response.json()) as Record<string, any> };
}

const input = suite('REST input is checked before any handler runs');
input.before(async () => {
  port = await server.listen(0);
});
input.after(() => server.close());

input('a name from the object prototype is refused or looked up as a name, never found on Object.prototype', async () => {
  const proto = await call('GET', '/things/__proto__');
  assert.is(proto.status, 400);
  assert.is(proto.body.code, 'bad_path');
  assert.match(proto.body.message, /"name" must be a name name: 1-63 letters/);
  for (const name of ['constructor', 'toString', 'hasOwnProperty']) {
    const res = await call('GET', `/things/${name}`);
    assert.is(res.status, 200);
    assert.equal(res.body, { missing: name });
  }
});

input('malformed percent-encoding is a 400 naming the segment', async () => {
  for (const bad of ['%E0%A4%A', '%', '%zz', 'a%2']) {
    const res = await call('GET', `/things/${bad}`);
    assert.is(res.status, 400, bad);
    assert.is(res.body.code, 'bad_path');
    assert.match(res.body.message, /malformed percent-encoding/);
  }
});

input('../ in a path parameter, encoded or not, never reaches the handler', async () => {
  for (const branch of ['..%2F..%2Fetc', '.%2E', 'a%2F..%2Fb', '%2E%2E', '..%5C..']) {
    // The URL parser folds `.%2E` into `..` and resolves it (a 404: no such route); the rest is a bad name.
    const res = await call('GET', `/wal/${branch}/000000010000000000000001`);
    assert.ok(res.status === 400 || res.status === 404, `${branch}: ${res.status}`);
  }
  assert.is((await call('GET', '/wal/main/..%2F..%2Fstate.json')).status, 400);
  assert.equal((await call('GET', '/wal/main/000000010000000000000001')).body, { branch: 'main', file: '000000010000000000000001' });
});

input('numbers must be finite and bounded: 1e999 (Infinity), negatives, strings and null are refused', async () => {
  for (const days of ['1e999', '-1', '"Infinity"', '"NaN"', 'null', '36501', '"7"', '[7]', '{"a":1}']) {
    const res = await call('POST', '/gc', `{"keep_wal_days": ${days}}`);
    assert.is(res.status, 400, days);
    assert.match(res.body.message, /"keep_wal_days" must be a number of days from 0 to 36500/);
  }
  assert.equal((await call('POST', '/gc', '{"keep_wal_days": 0.5}')).body, { days: 0.5 });
  assert.equal((await call('POST', '/gc', '')).body, { days: 7 });
});

input('unknown fields, wrong types and missing fields get one line naming the field', async () => {
  const unknown = await call('POST', '/gc', '{"keep_wal_dayz": 3}');
  assert.is(unknown.status, 400);
  assert.match(unknown.body.message, /unknown field "keep_wal_dayz"/);
  const action = await call('POST', '/pgs/main/actions', '{"action": "constructor"}');
  assert.match(action.body.message, /"action" must be one of start, stop, promote \(got "constructor"\)/);
  const missing = await call('POST', '/pgs/main/actions', '{}');
  assert.match(missing.body.message, /"action" is required: one of start, stop, promote/);
  const proto = await call('POST', '/pgs/main/actions', '{"action": "stop", "__proto__": {"polluted": true}}');
  assert.is(proto.status, 400);
  assert.is(({} as Record<string, unknown>).polluted, undefined);
});

input('deeply nested JSON is refused before it is parsed; an oversized body is a 413, not a reset', async () => {
  const deep = await call('POST', '/anything', '['.repeat(100_000) + ']'.repeat(100_000));
  assert.is(deep.status, 400);
  assert.match(deep.body.message, /nests deeper than 32 levels/);
  const strings = await call('POST', '/anything', JSON.stringify({ a: '[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[' }));
  assert.equal(strings.body, { keys: ['a'] });
  const big = await call('POST', '/anything', JSON.stringify({ a: 'x'.repeat(2 << 20) }));
  assert.is(big.status, 413);
  assert.is(big.body.code, 'body_too_large');
  assert.is((await call('GET', '/things/a')).status, 200);
});

const mutex = suite('KeyedMutex');

mutex('work under one key runs one at a time in order; other keys run meanwhile; failures do not block', async () => {
  const lock = new KeyedMutex();
  const log: string[] = [];
  const step = (key: string, label: string, ms: number, fail = false) =>
    lock.run(key, async () => {
      log.push(`${label}+`);
      await new Promise((r) => setTimeout(r, ms));
      log.push(`${label}-`);
      if (fail) throw new Error(label);
      return label;
    });
  const results = await Promise.allSettled([step('x', 'x1', 30, true), step('x', 'x2', 5), step('y', 'y1', 5)]);
  assert.equal(
    results.map((r) => r.status),
    ['rejected', 'fulfilled', 'fulfilled'],
  );
  assert.ok(log.indexOf('x1-') < log.indexOf('x2+'), log.join(' '));
  assert.ok(log.indexOf('y1+') < log.indexOf('x1-'), log.join(' '));
  assert.is(lock.busy('x'), false);
});

input.run();
mutex.run();
