import { createHash, createHmac, pbkdf2Sync, randomBytes, timingSafeEqual } from 'node:crypto';

// SCRAM-SHA-256 (RFC 5802 / 7677) as Postgres speaks it: no channel binding, the user name left empty in the
// messages (the server takes it from the startup packet).

const hmac = (key: Buffer, data: string) => createHmac('sha256', key).update(data).digest();

/** One SCRAM exchange from the client's side. */
export class ScramClient {
  private readonly clientNonce = randomBytes(18).toString('base64');
  private readonly clientFirstBare = `n=,r=${this.clientNonce}`;
  private serverSignature?: Buffer;

  constructor(private readonly password: string) {}

  /** The client-first-message, sent in SASLInitialResponse. */
  first(): string {
    return `n,,${this.clientFirstBare}`;
  }

  /** Answer the server-first-message with the client-final-message (the proof). */
  final(serverFirst: string): string {
    const attrs = Object.fromEntries(serverFirst.split(',').map((part) => [part[0], part.slice(2)]));
    const { r: nonce, s: salt, i: iterations } = attrs as Record<string, string>;
    if (!nonce?.startsWith(this.clientNonce) || !salt || !iterations) throw new Error('SCRAM: malformed server-first-message');
    const salted = pbkdf2Sync(this.password.normalize('NFKC'), Buffer.from(salt, 'base64'), Number(iterations), 32, 'sha256');
    const clientKey = hmac(salted, 'Client Key');
    const storedKey = createHash('sha256').update(clientKey).digest();
    const withoutProof = `c=biws,r=${nonce}`;
    const authMessage = `${this.clientFirstBare},${serverFirst},${withoutProof}`;
    const signature = hmac(storedKey, authMessage);
    const proof = Buffer.from(clientKey.map((byte, i) => byte ^ signature[i]));
    this.serverSignature = hmac(hmac(salted, 'Server Key'), authMessage);
    return `${withoutProof},p=${proof.toString('base64')}`;
  }

  /** Check the server-final-message: the server proves it knows the password too. */
  verify(serverFinal: string): void {
    const given = Buffer.from(/(?:^|,)v=([^,]+)/.exec(serverFinal)?.[1] ?? '', 'base64');
    if (!this.serverSignature || given.length !== this.serverSignature.length || !timingSafeEqual(given, this.serverSignature)) {
      throw new Error('SCRAM: the server signature does not match; refusing the connection');
    }
  }
}
