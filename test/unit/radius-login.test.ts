import { createHash, randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { answerRadius, serveRadius } from '../../daemon/radius-login.js';

/*
 * The RADIUS answers Postgres checks (RFC 2865): Access-Request packets built the way Postgres' auth.c builds
 * them, the reply's response authenticator recomputed here; a wrong password, user or secret is rejected.
 */

const test = suite('RADIUS login for computes over pulled snapshots');
const md5 = (...parts: Buffer[]) => createHash('md5').update(Buffer.concat(parts)).digest();
const SECRET = 'shared-secret';

/** An Access-Request for `user` / `password`, hidden with `secret` as a RADIUS client does. */
function request(user: string, password: string, secret = SECRET, id = 7): { packet: Buffer; authenticator: Buffer } {
  const authenticator = randomBytes(16);
  const padded = Buffer.alloc(Math.ceil(Math.max(password.length, 1) / 16) * 16);
  Buffer.from(password).copy(padded);
  const hidden = Buffer.alloc(padded.length);
  let previous = authenticator;
  for (let i = 0; i < padded.length; i += 16) {
    const pad = md5(Buffer.from(secret), previous);
    for (let j = 0; j < 16; j++) hidden[i + j] = padded[i + j] ^ pad[j];
    previous = hidden.subarray(i, i + 16);
  }
  const attribute = (type: number, value: Buffer) => Buffer.concat([Buffer.from([type, value.length + 2]), value]);
  const attributes = Buffer.concat([
    attribute(1, Buffer.from(user)),
    attribute(2, hidden),
    attribute(6, Buffer.from([0, 0, 0, 8])), // Service-Type: Authenticate Only
    attribute(32, Buffer.from('postgresql')), // NAS-Identifier
  ]);
  const header = Buffer.from([1, id, 0, 0]);
  header.writeUInt16BE(20 + attributes.length, 2);
  return { packet: Buffer.concat([header, authenticator, attributes]), authenticator };
}

/** The reply's code after checking its authenticator as Postgres does. */
function codeOf(reply: Buffer, authenticator: Buffer, id = 7): number {
  assert.is(reply.length, 20);
  assert.is(reply[1], id, 'answers the same request');
  const expected = md5(reply.subarray(0, 4), authenticator, Buffer.from(SECRET));
  assert.ok(expected.equals(reply.subarray(4, 20)), 'response authenticator checks out');
  return reply[0];
}

const check = (user: string, password: string) => user === 'postgres' && password === 'right password, longer than 16 bytes';

test('the right user and password: Access-Accept; anything else: Access-Reject', () => {
  const good = request('postgres', 'right password, longer than 16 bytes');
  assert.is(codeOf(answerRadius(good.packet, SECRET, check)!, good.authenticator), 2);
  const wrong = request('postgres', 'wrong');
  assert.is(codeOf(answerRadius(wrong.packet, SECRET, check)!, wrong.authenticator), 3);
  const other = request('alice', 'right password, longer than 16 bytes');
  assert.is(codeOf(answerRadius(other.packet, SECRET, check)!, other.authenticator), 3);
  const badSecret = request('postgres', 'right password, longer than 16 bytes', 'another secret');
  assert.is(codeOf(answerRadius(badSecret.packet, SECRET, check)!, badSecret.authenticator), 3);
});

test('malformed packets are dropped', () => {
  assert.is(answerRadius(Buffer.alloc(10), SECRET, check), undefined);
  const { packet } = request('postgres', 'x');
  packet[0] = 4; // Accounting-Request
  assert.is(answerRadius(packet, SECRET, check), undefined);
  const truncated = request('postgres', 'x').packet;
  truncated.writeUInt16BE(truncated.length + 10, 2);
  assert.is(answerRadius(truncated, SECRET, check), undefined);
});

test('served over UDP on 127.0.0.1', async () => {
  const server = await serveRadius(0, SECRET, check);
  const client = dgram.createSocket('udp4');
  try {
    const { packet, authenticator } = request('postgres', 'right password, longer than 16 bytes');
    const reply = new Promise<Buffer>((resolve) => client.once('message', resolve));
    client.send(packet, server.address().port, '127.0.0.1');
    assert.is(codeOf(await reply, authenticator), 2);
  } finally {
    client.close();
    server.close();
  }
});

test.run();
