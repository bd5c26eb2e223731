import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { WireConnection } from '../../replication/connection.js';
import { wireMessage as message } from '../../testkit/wire.js';

// The replication client parses messages in place and, with `readBuffer`, reads into one reused buffer. A server
// on a real Unix socket sends a CopyBoth stream cut at awkward places (one byte, a header split in two, a message
// larger than the read buffer): every payload must arrive whole, in order, and unchanged until its batch ends.

const PORT = 5432;

/** Payloads of many sizes, each filled with a pattern of its own so that a mix-up shows. */
function payloads(): Buffer[] {
  const sizes = [1, 2, 25, 100, 4096, 8192, 3000, 70_000, 5, 131_072, 17, 250_000, 1, 64];
  return sizes.map((size, i) => Buffer.from(Array.from({ length: size }, (_, j) => (i * 31 + j * 7) & 0xff)));
}

/** A server that authenticates anyone, answers one query with a CopyBoth stream of `data`, cut into odd pieces. */
async function fakeServer(dir: string, data: Buffer[]): Promise<net.Server> {
  const server = net.createServer((socket) => {
    let stage = 0;
    socket.on('data', async () => {
      if (stage === 0) {
        stage = 1; // the startup message
        socket.write(Buffer.concat([message('R', Buffer.alloc(4)), message('Z', Buffer.from('I'))]));
      } else if (stage === 1) {
        stage = 2; // the query
        const stream = Buffer.concat([message('W', Buffer.alloc(3)), ...data.map((d) => message('d', d)), message('c', Buffer.alloc(0))]);
        const cuts = [1, 1, 3, 2, 5, 9, 4, 1, 8000, 7, 1, 100_000, 3, 60_000];
        for (let at = 0, i = 0; at < stream.length; i++) {
          const end = Math.min(stream.length, at + cuts[i % cuts.length]);
          socket.write(stream.subarray(at, end));
          at = end;
          await sleep(1); // a read of its own
        }
      } else if (stage === 2) {
        stage = 3; // our CopyDone
        socket.write(Buffer.concat([message('C', Buffer.from('COPY 0\0')), message('Z', Buffer.from('I'))]));
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(path.join(dir, `.s.PGSQL.${PORT}`), resolve));
  return server;
}

const framing = suite('wire framing: messages cut anywhere arrive whole, with a reused read buffer and without');

for (const readBuffer of [undefined, 1024]) {
  framing(`readBuffer ${readBuffer ?? 'none'}: every CopyData payload arrives whole and in order`, async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'neon-wire-'));
    const sent = payloads();
    const server = await fakeServer(dir, sent);
    try {
      const connection = await WireConnection.connect({ host: dir, port: PORT, user: 'u', readBuffer });
      const received: Buffer[] = [];
      let batch: Buffer[] = [];
      let batches = 0;
      await connection.copyBoth(
        'START_REPLICATION 0/0',
        (payload) => batch.push(payload), // a view: the contract says it stays valid until the batch ends
        () => {
          batches++;
          received.push(...batch.map((view) => Buffer.from(view)));
          batch = [];
        },
      );
      connection.close();
      assert.is(received.length, sent.length, 'as many payloads as were sent');
      sent.forEach((payload, i) => assert.ok(received[i].equals(payload), `payload ${i} (${payload.length} bytes) is intact`));
      assert.ok(batches > 1, 'the stream came in several reads');
    } finally {
      server.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
}

framing.run();
