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
import { migrate } from "./migrate.js";

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

/** Connects (starting the embedded database when DATABASE_URL is unset) and migrates. */
export async function openDatabase(config: Pick<Config, "databaseUrl" | "dataDir">, logger: Logger): Promise<OpenDatabase> {
  let embedded: EmbeddedPostgres | undefined;
  let url = config.databaseUrl;
  if (!url) {
    const dataDir = config.dataDir ?? defaultDataDir(PROJECT_ROOT);
    embedded = await EmbeddedPostgres.start({ dataDir, logger });
    url = embedded.url();
  }
  const sequelize = createSequelize({ url, logger });
  try {
    const applied = await migrate(sequelize);
    if (applied.length > 0) logger.info("migrations applied", { applied });
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
