import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

/** What the proxy can do to a request instead of (or before) forwarding it. */
export type Fault = 'error500' | 'slowdown503' | 'throttle429' | 'reset' | 'delay' | 'cut';

/** Options of {@link startFaultProxy}. */
export interface FaultProxyOptions {
  /** Where requests go, e.g. `http://127.0.0.1:4568`. */
  target: string;
  /** Share of requests (0..1) that get a fault (default 0: a plain proxy). */
  share?: number;
  /** Faults to pick from, uniformly (default: all). */
  faults?: Fault[];
  /** How long a `delay` holds a request before forwarding it (default 2000 ms). */
  delayMs?: number;
  /** Seed of the fault dice, so that a failing run can be replayed (default 1). */
  seed?: number;
}

/** A fixed answer for every request, e.g. `{ status: 403, code: 'InvalidAccessKeyId' }`. */
export interface CannedAnswer {
  status: number;
  code: string;
  message?: string;
}

/** A running fault proxy. */
export interface FaultProxy {
  /** `http://127.0.0.1:<port>`: use it as the S3 endpoint. */
  endpoint: string;
  /** Requests seen, faults included. */
  requests: number;
  /** Faults injected so far, by kind. */
  injected: Record<Fault, number>;
  /** Change the share of faulty requests and the faults to pick from. */
  configure(share: number, faults?: Fault[]): void;
  /** Answer every request with an S3 error XML (or forward again with `undefined`). */
  answer(canned: CannedAnswer | undefined): void;
  close(): Promise<void>;
}

const ALL: Fault[] = ['error500', 'slowdown503', 'throttle429', 'reset', 'delay', 'cut'];

const ERRORS: Record<'error500' | 'slowdown503' | 'throttle429', CannedAnswer> = {
  error500: { status: 500, code: 'InternalError', message: 'We encountered an internal error. Please try again.' },
  slowdown503: { status: 503, code: 'SlowDown', message: 'Please reduce your request rate.' },
  throttle429: { status: 429, code: 'TooManyRequests', message: 'Too many requests.' },
};

/**
 * An HTTP proxy on 127.0.0.1 in front of an S3 endpoint that breaks a share of requests the way real networks and
 * stores do: 500 InternalError, 503 SlowDown, 429, a connection reset before any answer, a delay, or a `cut`:
 * a GET whose answer is dropped halfway through its body. Other faults hit requests before they reach the store,
 * so they change nothing there.
 */
export async function startFaultProxy(options: FaultProxyOptions): Promise<FaultProxy> {
  const target = new URL(options.target);
  let share = options.share ?? 0;
  let faults = options.faults ?? ALL;
  let canned: CannedAnswer | undefined;
  const delayMs = options.delayMs ?? 2000;
  const random = mulberry32(options.seed ?? 1);
  const injected = Object.fromEntries(ALL.map((fault) => [fault, 0])) as Record<Fault, number>;

  const server = http.createServer(async (req, res) => {
    proxy.requests++;
    if (canned) return reply(req, res, canned);
    const fault = random() < share ? faults[Math.floor(random() * faults.length)] : undefined;
    // A cut is counted when it happens: only GETs with a body can be cut.
    if (fault && fault !== 'cut') injected[fault]++;
    if (fault === 'reset') return req.socket.destroy();
    if (fault === 'delay') await sleep(delayMs);
    else if (fault && fault !== 'cut') return reply(req, res, ERRORS[fault]);
    const upstream = http.request(
      { host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers },
      (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        const length = Number(answer.headers['content-length'] ?? 0);
        if (fault !== 'cut' || req.method !== 'GET' || length < 2) return void answer.pipe(res);
        // Send the first half of the body, then drop the connection.
        injected.cut++;
        let sent = 0;
        answer.on('data', (chunk: Buffer) => {
          const room = Math.floor(length / 2) - sent;
          if (room <= 0) return;
          res.write(chunk.subarray(0, room));
          sent += Math.min(room, chunk.length);
          if (sent >= Math.floor(length / 2)) setTimeout(() => res.socket?.destroy(), 20);
        });
      },
    );
    upstream.on('error', () => res.destroy());
    req.pipe(upstream);
  });
  server.listen(0, '127.0.0.1');
  await new Promise((resolve) => server.once('listening', resolve));

  const proxy: FaultProxy = {
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    requests: 0,
    injected,
    configure(newShare, newFaults) {
      share = newShare;
      if (newFaults) faults = newFaults;
    },
    answer(answer) {
      canned = answer;
    },
    async close() {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
  return proxy;
}

/** Answer with an S3 error document once the request body is read (HEAD answers have no body, as on S3). */
function reply(req: http.IncomingMessage, res: http.ServerResponse, answer: CannedAnswer): void {
  req.resume();
  req.once('end', () => {
    const xml =
      `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${answer.code}</Code>` +
      `<Message>${answer.message ?? answer.code}</Message><RequestId>fault-proxy</RequestId></Error>`;
    res.writeHead(answer.status, { 'content-type': 'application/xml', 'x-amz-request-id': 'fault-proxy' });
    res.end(req.method === 'HEAD' ? undefined : xml);
  });
}

/** A small seeded PRNG (mulberry32): the same seed gives the same faults. */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
