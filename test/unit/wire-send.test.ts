import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { WireConnection } from '../../replication/connection.js';
import { wireMessage as message } from '../../testkit/wire.js';

// A server on a real Unix socket that does not read for a while lets the kernel's buffer fill under the replication
// client's writes (status replies and larger messages): every message must still arrive whole and in order. (A
// write(2) straight to the socket when nothing was queued fails this when it jumps the queue.)

const PORT = 5432;
const COUNT = 400;

/** Payloads of many sizes (a 34-byte status reply up to 64 KiB), each with a pattern of its own. */
function payloads(): Buffer[] {
  const sizes = [34, 65_536, 1, 34, 9000, 34, 30_000];
  return Array.from({ length: COUNT }, (_, i) => Buffer.from(Array.from({ length: sizes[i % sizes.length] }, (_, j) => (i * 31 + j * 7) & 0xff)));
}

/** CopyData payloads in `stream` (after the startup message), in order. */
function copyData(stream: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let at = stream.readUInt32BE(0); // the startup message has no type byte
  while (at + 5 <= stream.length) {
    const end = at + 1 + stream.readUInt32BE(at + 1);
    if (end > stream.length) break;
    if (stream[at] === 0x64) out.push(stream.subarray(at + 5, end));
    at = end;
  }
  return out;
}

const send = suite('wire send: messages written at once or queued arrive whole and in order');

send('a server that stops reading for a while gets every message, in order', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'neon-wire-send-'));
  const received: Buffer[] = [];
  let serverSocket: net.Socket | undefined;
  const server = net.createServer((socket) => {
    serverSocket = socket;
    let answered = false;
    socket.on('data', (chunk: Buffer) => {
      received.push(Buffer.from(chunk));
      if (!answered) {
        answered = true;
        socket.write(Buffer.concat([message('R', Buffer.alloc(4)), message('Z', Buffer.from('I'))]));
        socket.pause(); // the client's next writes fill the kernel's buffers
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(path.join(dir, `.s.PGSQL.${PORT}`), resolve));
  try {
    const connection = await WireConnection.connect({ host: dir, port: PORT, user: 'u', readBuffer: 1024 });
    const sent = payloads();
    for (const payload of sent.slice(0, COUNT / 2)) connection.sendCopyData(payload);
    await sleep(100);
    serverSocket!.resume();
    for (const payload of sent.slice(COUNT / 2)) {
      connection.sendCopyData(payload);
      if (Math.random() < 0.1) await sleep(1);
    }
    for (let i = 0; i < 600 && copyData(Buffer.concat(received)).length < COUNT; i++) await sleep(50);
    const got = copyData(Buffer.concat(received));
    assert.is(got.length, COUNT, 'every message arrived');
    got.forEach((payload, i) => assert.ok(payload.equals(sent[i]), `message ${i} (${sent[i].length} bytes) arrived whole and in order`));
    connection.close();
  } finally {
    serverSocket?.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

send.run();
