/**
 * The one wrapper the data-access adapters (src/db/<area>/) use over
 * Sequelize's connection pool: positional binds ($1, $2…), rows as plain
 * objects, optionally inside the caller's transaction.
 */
import { QueryTypes, type Sequelize, type Transaction } from "sequelize";

/** The rows a statement returns. */
export function rows<R extends object>(db: Sequelize, sql: string, bind: unknown[] = [], t?: Transaction): Promise<R[]> {
  return db.query<R>(sql, { bind, transaction: t, type: QueryTypes.SELECT });
}

/** The first row a statement returns, if any. */
export async function row<R extends object>(db: Sequelize, sql: string, bind: unknown[] = [], t?: Transaction): Promise<R | undefined> {
  return (await rows<R>(db, sql, bind, t))[0];
}

/** Runs a statement for its effect. */
export async function run(db: Sequelize, sql: string, bind: unknown[] = [], t?: Transaction): Promise<void> {
  await db.query(sql, { bind, transaction: t });
}

/** A pooled connection as Sequelize's postgres dialect hands it out (a pg Client). */
interface PooledClient {
  query(sql: string, values: unknown[]): Promise<{ rows: unknown[] }>;
  /** Sequelize's pool drops a connection marked invalid instead of reusing it. */
  _invalid?: boolean;
}
interface ConnectionManager {
  getConnection(options: { type: "read" | "write" }): Promise<PooledClient>;
  releaseConnection(connection: PooledClient): Promise<void> | void;
}

/**
 * The rows of one statement that is its own transaction, sent straight
 * through a pooled connection: the same pool and connections as `rows`;
 * errors are pg's own (SQLSTATE in `code`, which src/errors.ts and the
 * retries read), not Sequelize's wrappers. Without Sequelize's per-query work (option
 * merging, bind rewriting, a stack trace per call, hooks), which measured
 * about 5% of the service's CPU on the coalesced deduction path. For hot
 * statements only; everything else goes through `rows`.
 */
export async function rowsOnce<R extends object>(db: Sequelize, sql: string, bind: unknown[]): Promise<R[]> {
  const manager = db.connectionManager as unknown as ConnectionManager;
  const connection = await manager.getConnection({ type: "write" });
  try {
    return (await connection.query(sql, bind)).rows as R[];
  } catch (err) {
    // As Sequelize's own query does: a connection that failed this way is not reused.
    if ((err as { code?: unknown }).code === "ECONNRESET") connection._invalid = true;
    throw err;
  } finally {
    // The statement's outcome stands whatever the pool says about taking the connection back.
    try {
      await manager.releaseConnection(connection);
    } catch {
      // nothing to undo: the connection is the pool's problem now
    }
  }
}
