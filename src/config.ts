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
  /** Where GET /metrics is served: the main port, a port of its own (METRICS_PORT), or nowhere (METRICS_PORT=""). */
  metrics?: "main" | "off" | number;
  /** MIGRATE: "auto" applies pending migrations at start; "off" refuses to serve an outdated schema. */
  migrate?: "auto" | "off";
  /** How long start-up keeps retrying an unreachable database (DATABASE_CONNECT_TIMEOUT_MS). */
  databaseConnectTimeoutMs?: number;
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
    metrics: metricsPort(env.METRICS_PORT),
    migrate: oneOf(env, "MIGRATE", ["auto", "off"] as const, "auto"),
    databaseConnectTimeoutMs: positiveInteger(env, "DATABASE_CONNECT_TIMEOUT_MS", 30_000),
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

/** One of `values`, or its default when unset. */
function oneOf<T extends string>(env: NodeJS.ProcessEnv, name: string, values: readonly T[], fallback: T): T {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  if (!(values as readonly string[]).includes(raw)) throw new Error(`${name} must be one of ${values.join(", ")} (got ${JSON.stringify(raw)})`);
  return raw as T;
}

/** METRICS_PORT: unset serves /metrics on the main port, "" nowhere, a port number on that port. */
function metricsPort(raw: string | undefined): "main" | "off" | number {
  if (raw === undefined) return "main";
  if (raw === "") return "off";
  const port = Number(raw);
  if (!/^\d+$/.test(raw) || port < 1 || port > 65535) throw new Error(`METRICS_PORT must be a port from 1 to 65535, or empty to serve no metrics (got ${JSON.stringify(raw)})`);
  return port;
}
