/**
 * Opens the configured database (DATABASE_URL or the embedded one) and
 * applies pending migrations.
 */
import { existsSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import type { Sequelize } from "sequelize";
import type { Config } from "../config.js";
import type { Logger } from "../logger.js";
import { createSequelize } from "./database.js";
import { EmbeddedPostgres, defaultDataDir } from "./embedded.js";
import { migrate, pendingMigrations } from "./migrate.js";

/** The checkout's root (where package.json is), whether this runs from src/ under tsx or compiled from dist/. */
export const PROJECT_ROOT = projectRoot(path.dirname(fileURLToPath(import.meta.url)));

function projectRoot(from: string): string {
  for (let dir = from; ; dir = path.dirname(dir)) {
    if (existsSync(path.join(dir, "package.json"))) return dir;
    if (path.dirname(dir) === dir) return path.resolve(from, "..", "..");
  }
}

export interface OpenDatabase {
  sequelize: Sequelize;
  embedded?: EmbeddedPostgres;
  /** Closes the pool and stops the embedded database, if any. */
  close(): Promise<void>;
}

/**
 * Connects (starting the embedded database when DATABASE_URL is unset),
 * retrying an unreachable database with backoff for up to
 * `databaseConnectTimeoutMs`; then migrates (MIGRATE=auto) or checks that
 * the schema is current (MIGRATE=off), refusing to serve an outdated one.
 */
export async function openDatabase(
  config: Pick<Config, "databaseUrl" | "dataDir" | "migrate" | "databaseConnectTimeoutMs">,
  logger: Logger,
): Promise<OpenDatabase> {
  let embedded: EmbeddedPostgres | undefined;
  let url = config.databaseUrl;
  if (!url) {
    const dataDir = config.dataDir ?? defaultDataDir(PROJECT_ROOT);
    embedded = await EmbeddedPostgres.start({ dataDir, logger });
    url = embedded.url();
  }
  const sequelize = createSequelize({ url, logger });
  try {
    await connectWithRetry(sequelize, config.databaseConnectTimeoutMs ?? 30_000, logger);
    if ((config.migrate ?? "auto") === "auto") {
      const applied = await migrate(sequelize);
      if (applied.length > 0) logger.info("migrations applied", { applied });
    } else {
      const pending = await pendingMigrations(sequelize);
      if (pending.length > 0) {
        throw new Error(`the database schema is behind this build (pending migrations: ${pending.join(", ")}); MIGRATE=off, so run \`npm run migrate\` with a role that may change the schema, then start again`);
      }
    }
  } catch (err) {
    await sequelize.close().catch(() => undefined);
    await embedded?.stop();
    throw err;
  }
  return {
    sequelize,
    embedded,
    async close() {
      await sequelize.close().catch(() => undefined);
      await embedded?.stop();
    },
  };
}

/** Waits for the database to answer, retrying with doubling backoff (0.25 s to 5 s) until `timeoutMs` has passed. */
async function connectWithRetry(sequelize: Sequelize, timeoutMs: number, logger: Logger): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (let delay = 250; ; delay = Math.min(delay * 2, 5_000)) {
    try {
      await sequelize.authenticate();
      return;
    } catch (err) {
      const reason = err instanceof Error ? err.message : String(err);
      // Refusals that waiting cannot cure (wrong password, missing database) end at once.
      const state = (err as { parent?: { code?: string } }).parent?.code;
      if (state === "28P01" || state === "28000" || state === "3D000" || Date.now() + delay > deadline) {
        throw new Error(`cannot connect to the database: ${reason}`);
      }
      logger.warn("database not reachable yet; retrying", { error: reason, retry_in_ms: delay });
      await new Promise((r) => setTimeout(r, delay));
    }
  }
}
