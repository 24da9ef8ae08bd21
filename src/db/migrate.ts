/**
 * Schema migrations (umzug), applied by `npm start` before serving and by
 * `npm run migrate`. Migrations are listed here in order, imported
 * statically, so names never depend on the file extension (tsx or compiled).
 * An advisory lock makes concurrent starts on one database safe.
 */
import { QueryTypes, type Sequelize } from "sequelize";
import { SequelizeStorage, Umzug, type MigrationParams } from "umzug";
import * as initialSchema from "./migrations/0001-initial-schema.js";
import * as deductBatchFunction from "./migrations/0002-deduct-batch-function.js";
import * as creditLots from "./migrations/0003-credit-lots.js";
import * as currencyAmounts from "./migrations/0004-currency-amounts.js";
import * as paymentProviders from "./migrations/0005-payment-providers.js";
import * as openCatalogues from "./migrations/0006-open-catalogues.js";
import * as globalClaims from "./migrations/0007-global-claims.js";
import * as events from "./migrations/0008-events.js";
import * as priceVersions from "./migrations/0009-price-versions.js";
import * as usageLogIndex from "./migrations/0010-usage-log-index.js";
import { readFileSync } from "node:fs";
import path from "node:path";
import { PROJECT_ROOT } from "./connect.js";

export type Migration = (params: MigrationParams<Sequelize>) => Promise<void>;

const MIGRATIONS: { name: string; up: Migration; down: Migration }[] = [
  { name: "0001-initial-schema", ...initialSchema },
  { name: "0002-deduct-batch-function", ...deductBatchFunction },
  { name: "0003-credit-lots", ...creditLots },
  { name: "0004-currency-amounts", ...currencyAmounts },
  { name: "0005-payment-providers", ...paymentProviders },
  { name: "0006-open-catalogues", ...openCatalogues },
  { name: "0007-global-claims", ...globalClaims },
  { name: "0008-events", ...events },
  { name: "0009-price-versions", ...priceVersions },
  { name: "0010-usage-log-index", ...usageLogIndex },
];

/**
 * SQL functions kept as files (one home per rule, reviewed as a diff of the
 * file): applied with CREATE OR REPLACE after the migrations, on every run.
 */
const FUNCTION_FILES = ["billing_debit.sql", "billing_events.sql"];

const MIGRATION_LOCK = 0x62696c6c; // "bill"

/** The migrations this build knows that the database has not applied (MIGRATE=off refuses to serve then). */
export async function pendingMigrations(sequelize: Sequelize): Promise<string[]> {
  let applied: Set<string>;
  try {
    const rows = await sequelize.query<{ name: string }>(`SELECT name FROM schema_migrations`, { type: QueryTypes.SELECT });
    applied = new Set(rows.map((r) => r.name));
  } catch (err) {
    if ((err as { parent?: { code?: string } }).parent?.code === "42P01") return MIGRATIONS.map((m) => m.name); // no table: nothing applied
    throw err;
  }
  return MIGRATIONS.map((m) => m.name).filter((name) => !applied.has(name));
}

/**
 * Applies every pending migration (or those up to `options.to`, for tests
 * of a migration over older data), then the SQL function files; returns the
 * names applied.
 */
export async function migrate(sequelize: Sequelize, options: { to?: string } = {}): Promise<string[]> {
  const umzug = new Umzug<Sequelize>({
    migrations: MIGRATIONS.map((m) => ({ name: m.name, up: m.up, down: m.down })),
    context: sequelize,
    storage: new SequelizeStorage({ sequelize, tableName: "schema_migrations" }),
    logger: undefined,
  });
  // One connection holds the lock for the whole run.
  const lock = await sequelize.connectionManager.getConnection({ type: "write" });
  try {
    await (lock as unknown as { query(sql: string): Promise<unknown> }).query(`SELECT pg_advisory_lock(${MIGRATION_LOCK})`);
    const applied = await umzug.up(options.to ? { to: options.to } : {});
    if (options.to) return applied.map((m) => m.name); // an older schema: today's functions may not fit it
    for (const file of FUNCTION_FILES) await sequelize.query(readFileSync(path.join(PROJECT_ROOT, "src/db/functions", file), "utf8"));
    return applied.map((m) => m.name);
  } finally {
    await (lock as unknown as { query(sql: string): Promise<unknown> }).query(`SELECT pg_advisory_unlock(${MIGRATION_LOCK})`).catch(() => undefined);
    sequelize.connectionManager.releaseConnection(lock);
  }
}
