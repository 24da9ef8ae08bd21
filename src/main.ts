/**
 * `npm start`: reads and validates the configuration, opens (and migrates)
 * the database, serves the API, and drains gracefully on SIGTERM/SIGINT.
 * A start-up problem is one JSON log line per cause (naming the variable for
 * configuration problems) and a non-zero exit code.
 */
import { createApp } from "./app.js";
import { ConfigError, loadConfig, type Config } from "./config.js";
import { openDatabase, type OpenDatabase } from "./db/connect.js";
import { createLogger, type Logger } from "./logger.js";

let logger: Logger = createLogger("info");
let config: Config;
try {
  config = loadConfig();
} catch (err) {
  if (err instanceof ConfigError) for (const p of err.problems) logger.error("invalid configuration", { variable: p.variable, problem: p.problem });
  else logger.error("invalid configuration", { problem: err instanceof Error ? err.message : String(err) });
  process.exit(2);
}
logger = createLogger(config.logLevel);
if (config.apiKeys.size === 0) logger.warn("BILLING_API_KEYS is empty: every RPC except health and reflection will be UNAUTHENTICATED");
if (!config.secretKey) {
  logger.warn("BILLING_SECRET_KEY is unset: provider secrets cannot be stored, and page tokens are signed with a per-process key, so they fail on another replica or after a restart");
}

let db: OpenDatabase;
try {
  db = await openDatabase(config, logger);
} catch (err) {
  logger.error("cannot start", { problem: err instanceof Error ? err.message : String(err) });
  process.exit(1);
}
const server = createApp(config, db.sequelize, logger);
let port: number;
try {
  port = await server.listen(config.port, config.host);
} catch (err) {
  logger.error("cannot listen", { variable: "PORT", problem: err instanceof Error ? err.message : String(err), host: config.host, port: config.port });
  await db.close();
  process.exit(1);
}
logger.info("billing listening", { host: config.host, port, database: config.databaseUrl ? "DATABASE_URL" : `embedded (${db.embedded?.dataDir})` });

let stopping = false;
const stop = async (signal: string) => {
  if (stopping) return;
  stopping = true;
  logger.info("draining", { signal });
  await server.close(); // answers in-flight calls first
  await db.close(); // the pool closes last
  logger.info("stopped");
  process.exit(0);
};
process.on("SIGTERM", () => void stop("SIGTERM"));
process.on("SIGINT", () => void stop("SIGINT"));
process.on("unhandledRejection", (reason) => logger.error("unhandled rejection", { error: reason instanceof Error ? reason.message : String(reason) }));
