import pg from 'pg';

/** Run one statement on a fresh connection and return its rows (what a user's client would see). */
export async function query<T = Record<string, any>>(connectionString: string, sql: string): Promise<T[]> {
  const client = new pg.Client({ connectionString });
  await client.connect();
  try {
    return (await client.query(sql)).rows as T[];
  } finally {
    await client.end();
  }
}
