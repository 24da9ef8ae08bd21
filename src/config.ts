/**
 * Reads the service's configuration from the environment, once, at start.
 */
import { ApiKeyRing } from "./auth/api-keys.js";
import { type LogLevel, parseLogLevel } from "./logger.js";
import { DEFAULT_SERVER_LIMITS, type ServerLimits } from "./server.js";

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
  /** Connection timeouts and cap; unset means DEFAULT_SERVER_LIMITS. */
  serverLimits?: ServerLimits;
  /** false: unary calls go through connect-node too (UNARY_FAST_PATH=off), for diagnosis. */
  unaryFastPath?: boolean;
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
    serverLimits: {
      headersTimeoutMs: positiveInteger(env, "HEADERS_TIMEOUT_MS", DEFAULT_SERVER_LIMITS.headersTimeoutMs),
      idleTimeoutMs: positiveInteger(env, "IDLE_TIMEOUT_MS", DEFAULT_SERVER_LIMITS.idleTimeoutMs),
      bodyTimeoutMs: positiveInteger(env, "BODY_TIMEOUT_MS", DEFAULT_SERVER_LIMITS.bodyTimeoutMs),
      maxConnections: positiveInteger(env, "MAX_CONNECTIONS", DEFAULT_SERVER_LIMITS.maxConnections),
    },
    unaryFastPath: onOff(env, "UNARY_FAST_PATH", true),
  };
  if (env.DATABASE_URL) config.databaseUrl = env.DATABASE_URL;
  if (env.DATA_DIR) config.dataDir = env.DATA_DIR;
  if (env.BILLING_SECRET_KEY) config.secretKey = env.BILLING_SECRET_KEY;
  return config;
}

/** A positive integer variable, or its default when unset. */
function positiveInteger(env: NodeJS.ProcessEnv, name: string, fallback: number): number {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  if (!/^[1-9][0-9]*$/.test(raw) || !Number.isSafeInteger(Number(raw))) throw new Error(`${name} must be a positive integer (got ${JSON.stringify(raw)})`);
  return Number(raw);
}

/** An on/off switch, or its default when unset. */
function onOff(env: NodeJS.ProcessEnv, name: string, fallback: boolean): boolean {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  if (raw === "on") return true;
  if (raw === "off") return false;
  throw new Error(`${name} must be "on" or "off" (got ${JSON.stringify(raw)})`);
}
