/**
 * Opens the database: DATABASE_URL when set, else the embedded PostgreSQL.
 */
import pg from "pg";
import { Sequelize } from "sequelize";
import type { Logger } from "../logger.js";

// BIGINT (int8) and NUMERIC come back as strings; we parse them into bigint
// and Decimal ourselves, never through a float.
pg.defaults.parseInt8 = false;

export interface DatabaseOptions {
  url: string;
  logger?: Logger;
  /** Connection pool size (default 20). */
  poolMax?: number;
  /** Shown in pg_stat_activity (default "billing"). */
  applicationName?: string;
}

/** Creates the Sequelize instance: the connection pool every adapter (src/db/<area>/) queries through src/db/sql.ts. */
export function createSequelize(options: DatabaseOptions): Sequelize {
  return new Sequelize(options.url, {
    dialect: "postgres",
    dialectModule: pg,
    logging: false,
    benchmark: false,
    pool: { max: options.poolMax ?? 20, min: 0, idle: 10_000, acquire: 10_000, evict: 1_000 },
    dialectOptions: { application_name: options.applicationName ?? "billing", connectionTimeoutMillis: 5_000 },
  });
}

/** Whether the database answers a trivial query within `timeoutMs`. */
export async function databaseIsUp(sequelize: Sequelize, timeoutMs = 1_000): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      sequelize.query("SELECT 1"),
      new Promise((_, reject) => (timer = setTimeout(() => reject(new Error("timeout")), timeoutMs))),
    ]);
    return true;
  } catch {
    return false;
  } finally {
    clearTimeout(timer);
  }
}
