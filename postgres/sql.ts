import { textRows, WireConnection } from '../replication/connection.js';

/** How to log in to a compute. */
export interface Login {
  port: number;
  user: string;
  password: string;
  database: string;
}

/** Run one SQL statement on a compute (simple protocol, text results): the daemon's own small queries. */
export async function sql(login: Login, statement: string): Promise<Record<string, string | null>[]> {
  const connection = await WireConnection.connect({ host: '127.0.0.1', ...login, connectTimeoutMs: 5000 });
  try {
    return textRows(await connection.query(statement));
  } finally {
    connection.close();
  }
}
