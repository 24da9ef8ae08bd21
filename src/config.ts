/**
 * Reads the service's configuration from the environment, once, at start.
 */
import { ApiKeyRing } from "./auth/api-keys.js";
import { type LogLevel, parseLogLevel } from "./logger.js";

export interface Config {
  port: number;
  host: string;
  /** Unset: the embedded PostgreSQL in dataDir. */
  databaseUrl?: string;
  /** Where the embedded database lives; unset picks a default (see db/embedded.ts). */
  dataDir?: string;
  apiKeys: ApiKeyRing;
  /** Encrypts stored provider secrets. */
  secretKey?: string;
  /** Origins allowed to call through Connect-Web; "*" allows any. */
  corsOrigins: string[];
  logLevel: LogLevel;
}

/** Builds the configuration from `env`; throws a readable error on bad values. */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const port = Number(env.PORT ?? "8080");
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error("PORT must be an integer from 0 to 65535");
  const config: Config = {
    port,
    host: env.HOST || "127.0.0.1",
    apiKeys: ApiKeyRing.parse(env.BILLING_API_KEYS),
    corsOrigins: (env.CORS_ORIGINS ?? "").split(",").map((o) => o.trim()).filter((o) => o !== ""),
    logLevel: parseLogLevel(env.LOG_LEVEL),
  };
  if (env.DATABASE_URL) config.databaseUrl = env.DATABASE_URL;
  if (env.DATA_DIR) config.dataDir = env.DATA_DIR;
  if (env.BILLING_SECRET_KEY) config.secretKey = env.BILLING_SECRET_KEY;
  return config;
}
