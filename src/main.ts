/**
 * `npm start`: reads the configuration, opens (and migrates) the database,
 * serves the API, and shuts down gracefully on SIGTERM/SIGINT.
 */
import { createApp } from "./app.js";
import { loadConfig } from "./config.js";
import { openDatabase } from "./db/connect.js";
import { createLogger } from "./logger.js";

const config = loadConfig();
const logger = createLogger(config.logLevel);
if (config.apiKeys.size === 0) logger.warn("BILLING_API_KEYS is empty: every RPC except health and reflection will be UNAUTHENTICATED");

const db = await openDatabase(config, logger);
const server = createApp(config, db.sequelize, logger);
const port = await server.listen(config.port, config.host);
logger.info("billing listening", { host: config.host, port, database: config.databaseUrl ? "DATABASE_URL" : `embedded (${db.embedded?.dataDir})` });

let stopping = false;
const stop = async (signal: string) => {
  if (stopping) return;
  stopping = true;
  logger.info("shutting down", { signal });
  await server.close();
  await db.close();
  logger.info("stopped");
  process.exit(0);
};
process.on("SIGTERM", () => void stop("SIGTERM"));
process.on("SIGINT", () => void stop("SIGINT"));
process.on("unhandledRejection", (reason) => logger.error("unhandled rejection", { error: reason instanceof Error ? reason.message : String(reason) }));
