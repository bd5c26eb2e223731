// Building blocks for tests that play a Postgres server against the replication client on a real socket.

/** One protocol message: a type byte, the length (itself included) and the body. */
export function wireMessage(type: string, body: Buffer): Buffer {
  const header = Buffer.alloc(5);
  header.write(type, 0, 'latin1');
  header.writeUInt32BE(body.length + 4, 1);
  return Buffer.concat([header, body]);
}
