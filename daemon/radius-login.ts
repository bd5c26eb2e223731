import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import dgram from 'node:dgram';
import fs from 'node:fs';
import path from 'node:path';
import { writeFileAtomic } from '../core/fs-atomic.js';

/*
 * This repository's password for computes that cannot change a role's password: a hot standby or a static
 * compute replays another repository's history (a pulled snapshot), so its pg_authid holds the pusher's SCRAM
 * verifier, and ALTER ROLE is impossible in recovery — and would change the history others see. Postgres'
 * built-in RADIUS method (RFC 2865, compiled into every build, no library) hands the password to a server we
 * run: the daemon answers on 127.0.0.1 with a secret per compute, accepting exactly the compute's user and this
 * repository's password. One pg_hba.conf line, first among the user's lines, names the compute's user only, so
 * every other role keeps the pusher's verifiers. The password crosses loopback in the clear (RADIUS is how
 * Postgres delegates a password check); logins need the daemon, which its watchdog keeps running.
 */

/** `computes/<name>/login.json` (mode 0600): where the compute's RADIUS server listens and their shared secret. */
export interface RadiusLogin {
  port: number;
  secret: string;
}

const BEGIN = "# neon: this repository's login (begin)";
const END = "# neon: this repository's login (end)";
const ACCESS_REQUEST = 1;
const ACCESS_ACCEPT = 2;
const ACCESS_REJECT = 3;
const USER_NAME = 1;
const USER_PASSWORD = 2;

const md5 = (...parts: Buffer[]) => createHash('md5').update(Buffer.concat(parts)).digest();

/** A new secret (hex: nothing to quote in pg_hba.conf). */
export function newRadiusSecret(): string {
  return randomBytes(24).toString('hex');
}

/** The file that keeps a compute's RADIUS port and secret. */
export function loginFile(home: string): string {
  return path.join(home, 'login.json');
}

/** Read a compute's RADIUS login, if it has one. */
export function readRadiusLogin(home: string): RadiusLogin | undefined {
  try {
    return JSON.parse(fs.readFileSync(loginFile(home), 'utf8')) as RadiusLogin;
  } catch {
    return undefined;
  }
}

/** Save a compute's RADIUS login (it holds a secret: mode 0600). */
export async function saveRadiusLogin(home: string, login: RadiusLogin): Promise<void> {
  await writeFileAtomic(loginFile(home), JSON.stringify(login) + '\n', 0o600);
}

/**
 * The answer to one RADIUS packet: Access-Accept when it asks for `user` with the password `check` accepts,
 * Access-Reject otherwise; undefined for anything that is not a well-formed Access-Request (dropped).
 */
export function answerRadius(packet: Buffer, secret: string, check: (user: string, password: string) => boolean): Buffer | undefined {
  if (packet.length < 20 || packet[0] !== ACCESS_REQUEST) return undefined;
  const length = packet.readUInt16BE(2);
  if (length < 20 || length > packet.length) return undefined;
  const authenticator = packet.subarray(4, 20);
  let user: string | undefined;
  let hidden: Buffer | undefined;
  for (let at = 20; at < length; ) {
    const type = packet[at];
    const size = packet[at + 1];
    if (size < 2 || at + size > length) return undefined;
    if (type === USER_NAME) user = packet.subarray(at + 2, at + size).toString('utf8');
    if (type === USER_PASSWORD) hidden = packet.subarray(at + 2, at + size);
    at += size;
  }
  const key = Buffer.from(secret, 'utf8');
  let accepted = false;
  if (user !== undefined && hidden && hidden.length % 16 === 0 && hidden.length > 0) {
    // RFC 2865 5.2: c(i) = p(i) xor MD5(secret + c(i-1)), c(0) being the request authenticator.
    const plain = Buffer.alloc(hidden.length);
    let previous = authenticator;
    for (let i = 0; i < hidden.length; i += 16) {
      const pad = md5(key, previous);
      for (let j = 0; j < 16; j++) plain[i + j] = hidden[i + j] ^ pad[j];
      previous = hidden.subarray(i, i + 16);
    }
    const end = plain.indexOf(0);
    accepted = check(user, plain.subarray(0, end < 0 ? plain.length : end).toString('utf8'));
  }
  const reply = Buffer.alloc(20);
  reply[0] = accepted ? ACCESS_ACCEPT : ACCESS_REJECT;
  reply[1] = packet[1];
  reply.writeUInt16BE(20, 2);
  // Response authenticator: MD5(code + id + length + request authenticator + attributes + secret).
  md5(reply.subarray(0, 4), authenticator, key).copy(reply, 4);
  return reply;
}

/** A password comparison that takes the same time wherever the strings differ. */
export function samePassword(given: string, expected: string): boolean {
  const a = createHash('sha256').update(given).digest();
  const b = createHash('sha256').update(expected).digest();
  return timingSafeEqual(a, b);
}

/**
 * Listen for RADIUS requests on 127.0.0.1:`port` (0: any free port; when `port` is taken, another one) and
 * answer them with {@link answerRadius}. Resolves with the socket once bound.
 */
export async function serveRadius(
  port: number,
  secret: string,
  check: (user: string, password: string) => boolean,
): Promise<dgram.Socket> {
  const bind = (on: number) =>
    new Promise<dgram.Socket>((resolve, reject) => {
      const socket = dgram.createSocket('udp4');
      socket.once('error', reject);
      socket.bind(on, '127.0.0.1', () => {
        socket.off('error', reject);
        socket.on('error', () => undefined); // a bad datagram must not end the daemon
        resolve(socket);
      });
    });
  const socket = await bind(port).catch((error) => {
    if ((error as NodeJS.ErrnoException).code !== 'EADDRINUSE' || port === 0) throw error;
    return bind(0);
  });
  socket.on('message', (packet, from) => {
    const reply = answerRadius(packet, secret, check);
    if (reply) socket.send(reply, from.port, from.address);
  });
  socket.unref(); // it serves logins while the daemon runs; it never keeps the daemon alive by itself
  return socket;
}

const quoteHba = (name: string) => `"${name.replace(/"/g, '""')}"`;

/** pg_hba.conf without the login block. */
function withoutLoginBlock(text: string): string {
  const begin = text.indexOf(BEGIN);
  const end = text.indexOf(END);
  return begin >= 0 && end > begin ? text.slice(0, begin) + text.slice(end + END.length).replace(/^\n/, '') : text;
}

/**
 * Make `user`'s TCP logins to a data directory ask the RADIUS server at `port`: the block goes after neon's
 * internal block (which postgres/internal.ts keeps first) and before every line of the cluster's own. Returns
 * whether the file changed (Postgres then needs a reload).
 */
export async function writeLoginHba(dataDir: string, user: string, login: RadiusLogin): Promise<boolean> {
  const file = path.join(dataDir, 'pg_hba.conf');
  const before = fs.readFileSync(file, 'utf8');
  const owner = fs.statSync(file);
  const text = withoutLoginBlock(before);
  const method = `radius radiusservers="127.0.0.1" radiussecrets="${login.secret}" radiusports="${login.port}"`;
  const block = [
    BEGIN,
    "# This compute replays another repository's roles: its user logs in with this repository's password,",
    '# checked by the neon daemon (daemon/radius-login.ts).',
    `host all ${quoteHba(user)} 127.0.0.1/32 ${method}`,
    `host all ${quoteHba(user)} ::1/128 ${method}`,
    END,
  ].join('\n');
  const marker = '# neon: internal access (end)\n';
  const at = text.indexOf(marker);
  const wanted = at >= 0 ? `${text.slice(0, at + marker.length)}${block}\n${text.slice(at + marker.length)}` : `${block}\n${text}`;
  if (wanted === before) return false;
  await writeFileAtomic(file, wanted, 0o600);
  fs.chownSync(file, owner.uid, owner.gid); // the Postgres user's, as it was
  return true;
}
