import { PgError, textRows, WireConnection, type ConnectOptions } from '../replication/connection.js';
import { CREATE_INTERNAL_ROLE, INTERNAL_ROLE } from './internal.js';

/**
 * How the daemon logs in to a compute: as the internal role over the private Unix socket. The user's login (TCP
 * and password) is used only where that role does not exist: a cluster of a repository made before it, at a
 * point of history older than the role.
 */
export interface Login {
  port: number;
  /** The private socket folder; without it only the user's login is tried. */
  socketDir?: string;
  user: string;
  password: string;
  database: string;
}

/** Where the internal role connects: the compute's Unix socket. */
export function internalConnectOptions(login: Pick<Login, 'port' | 'socketDir'>): ConnectOptions {
  return { host: login.socketDir!, port: login.port, user: INTERNAL_ROLE, database: 'postgres' };
}

/** True for the server's answer to a login as a role that does not exist (an older cluster). */
export function isMissingRole(error: unknown): boolean {
  return error instanceof PgError && error.code === '28000' && /does not exist/.test(error.message);
}

/** Connect the way {@link Login} says: the internal role first, the user's login where that role is missing. */
export async function connectInternal(login: Login, extra: Partial<ConnectOptions> = {}): Promise<WireConnection> {
  if (login.socketDir) {
    try {
      return await WireConnection.connect({ ...internalConnectOptions(login), connectTimeoutMs: 5000, ...extra });
    } catch (error) {
      // ENOENT: a compute still running with the settings of an older neon (no socket yet).
      if (!isMissingRole(error) && (error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    }
  }
  const { port, user, password, database } = login;
  return WireConnection.connect({ host: '127.0.0.1', port, user, password, database, connectTimeoutMs: 5000, ...extra });
}

/** Run one SQL statement on a compute (simple protocol, text results): the daemon's own small queries. */
export async function sql(login: Login, statement: string): Promise<Record<string, string | null>[]> {
  const connection = await connectInternal(login);
  try {
    return textRows(await connection.query(statement));
  } finally {
    connection.close();
  }
}

/**
 * Make sure a primary has the internal role. A repository made before neon had it gets it here, once, over the
 * user's login (the way in it had until then). Resolves with what happened, for the log; a refusal says what to run.
 */
export async function ensureInternalRole(login: Login): Promise<'present' | 'created'> {
  try {
    (await WireConnection.connect({ ...internalConnectOptions(login), connectTimeoutMs: 5000 })).close();
    return 'present';
  } catch (error) {
    if (!isMissingRole(error)) throw error;
  }
  try {
    // Not waiting for the safekeepers: they log in as this role, so they may not stream yet.
    await sql({ ...login, socketDir: undefined }, `begin; set local synchronous_commit = local; ${CREATE_INTERNAL_ROLE}; commit`);
    return 'created';
  } catch (error) {
    throw new Error(
      `it has no role ${INTERNAL_ROLE} and the login in state.json cannot create it (${(error as Error).message}): ` +
        `connect as a superuser and run \`${CREATE_INTERNAL_ROLE};\`, then restart the compute`,
    );
  }
}
