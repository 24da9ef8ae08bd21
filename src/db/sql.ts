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
