/**
 * Reads the service's configuration from the environment, once, at start.
 */
import { ApiKeyRing } from "./auth/api-keys.js";
import { type LogLevel, parseLogLevel } from "./logger.js";
import { DEFAULT_SERVER_LIMITS, type ServerLimits } from "./server.js";
import { availableParallelism } from "node:os";

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
  /** WORKERS: how many server processes share the port (node:cluster); 1 serves from this process. */
  workers?: number;
  /** WEBHOOK_*: outbound webhook delivery (README, "Webhooks out"); unset fields take DEFAULT_WEBHOOK_SETTINGS. */
  webhooks?: Partial<WebhookSettings>;
  /** LOT_EXPIRY_WARNING_HOURS: lead time of credit_lot.expiring_soon events (default 72). */
  lotExpiryWarningMs?: number;
  /** SWEEP_INTERVAL_MS: how often due lots and reservations are expired and expiry warnings written (default 30000). */
  sweepIntervalMs?: number;
  /** DEDUCT_BATCHES: how many coalesced deduction batches a process runs at once (default 2). */
  deductBatches?: number;
  /**
   * The auto top-up worker (README, "Auto top-up"). loadConfig always sets
   * it; unset (a Config built by hand, as the test harness's) runs no
   * worker in this process, so nothing is charged at the real provider.
   */
  autoTopUp?: AutoTopUpSettings;
}

/** AUTO_TOP_UP_* and STRIPE_API_BASE. */
export interface AutoTopUpSettings {
  /** AUTO_TOP_UP_POLL_MS: how often due top-ups are looked for (default 2000). */
  pollMs: number;
  /** AUTO_TOP_UP_CHARGE_TIMEOUT_MS: how long a charge may take before its outcome counts as unknown (default 30000). */
  chargeTimeoutMs: number;
  /** STRIPE_API_BASE: Stripe's API base URL, no trailing slash (default https://api.stripe.com). */
  stripeApiBase: string;
}

/** WEBHOOK_*: outbound webhook delivery (README, "Webhooks out"), as src/domain/events/webhook-delivery.ts receives them. */
export interface WebhookSettings {
  /** WEBHOOK_ALLOW_PRIVATE_URLS: allow loopback/private/link-local targets (tests, private networks). */
  allowPrivateUrls: boolean;
  /** WEBHOOK_POLL_MS: how often each replica looks for due deliveries. */
  pollMs: number;
  /** WEBHOOK_TIMEOUT_MS: one attempt's limit, connect to last byte of the answer. */
  timeoutMs: number;
  /** WEBHOOK_MAX_ATTEMPTS: attempts before a delivery is FAILED (and its endpoint FAILING). */
  maxAttempts: number;
  /** WEBHOOK_RETRY_BASE_MS: the wait after the first failed attempt; it doubles after each further one. */
  retryBaseMs: number;
  /** WEBHOOK_RETRY_MAX_DELAY_MS: the longest wait between two attempts. */
  retryMaxDelayMs: number;
  /** WEBHOOK_CONCURRENCY: sends in flight at once per replica. */
  concurrency: number;
}

/**
 * Defaults: 14 attempts with waits of 30 s, 1, 2, 4, 8, 16, 32, 64, 128,
 * 256 min, then 6 h three times (each wait jittered to 50-100 %): a
 * delivery is retried for about 13-26 hours before it fails.
 */
export const DEFAULT_WEBHOOK_SETTINGS: WebhookSettings = {
  allowPrivateUrls: false,
  pollMs: 500,
  timeoutMs: 10_000,
  maxAttempts: 14,
  retryBaseMs: 30_000,
  retryMaxDelayMs: 6 * 60 * 60 * 1000,
  concurrency: 16,
};

/** Every problem found in the configuration, each naming its variable. */
export class ConfigError extends Error {
  constructor(readonly problems: { variable: string; problem: string }[]) {
    super(problems.map((p) => `${p.variable}: ${p.problem}`).join("; "));
    this.name = "ConfigError";
  }
}

/**
 * Builds the configuration from `env`, validating every variable in one
 * place before anything starts; throws a ConfigError listing every problem.
 */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const problems: { variable: string; problem: string }[] = [];
  const read = <T>(variable: string, parse: () => T, fallback: T): T => {
    try {
      return parse();
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      problems.push({ variable, problem: message.startsWith(`${variable} `) ? message.slice(variable.length + 1) : message });
      return fallback;
    }
  };
  const port = read("PORT", () => {
    const raw = env.PORT ?? "8080";
    if (!/^\d{1,5}$/.test(raw) || Number(raw) > 65535) throw new Error("must be an integer from 0 to 65535");
    return Number(raw);
  }, 0);
  const config: Config = {
    port,
    host: env.HOST || "127.0.0.1",
    apiKeys: read("BILLING_API_KEYS", () => ApiKeyRing.parse(env.BILLING_API_KEYS), ApiKeyRing.parse("")),
    corsOrigins: read("CORS_ORIGINS", () => parseOrigins(env.CORS_ORIGINS), []),
    logLevel: read("LOG_LEVEL", () => parseLogLevel(env.LOG_LEVEL), "info"),
    serverLimits: {
      headersTimeoutMs: read("HEADERS_TIMEOUT_MS", () => positiveInteger(env, "HEADERS_TIMEOUT_MS", DEFAULT_SERVER_LIMITS.headersTimeoutMs), 0),
      idleTimeoutMs: read("IDLE_TIMEOUT_MS", () => positiveInteger(env, "IDLE_TIMEOUT_MS", DEFAULT_SERVER_LIMITS.idleTimeoutMs), 0),
      bodyTimeoutMs: read("BODY_TIMEOUT_MS", () => positiveInteger(env, "BODY_TIMEOUT_MS", DEFAULT_SERVER_LIMITS.bodyTimeoutMs), 0),
      maxConnections: read("MAX_CONNECTIONS", () => positiveInteger(env, "MAX_CONNECTIONS", DEFAULT_SERVER_LIMITS.maxConnections), 0),
    },
    unaryFastPath: read("UNARY_FAST_PATH", () => onOff(env, "UNARY_FAST_PATH", true), true),
    metrics: read("METRICS_PORT", () => metricsPort(env.METRICS_PORT), "off"),
    migrate: read("MIGRATE", () => oneOf(env, "MIGRATE", ["auto", "off"] as const, "auto"), "auto"),
    databaseConnectTimeoutMs: read("DATABASE_CONNECT_TIMEOUT_MS", () => positiveInteger(env, "DATABASE_CONNECT_TIMEOUT_MS", 30_000), 0),
    lotExpiryWarningMs: read("LOT_EXPIRY_WARNING_HOURS", () => positiveInteger(env, "LOT_EXPIRY_WARNING_HOURS", 72) * 3_600_000, 72 * 3_600_000),
    sweepIntervalMs: read("SWEEP_INTERVAL_MS", () => positiveInteger(env, "SWEEP_INTERVAL_MS", 30_000), 30_000),
    deductBatches: read("DEDUCT_BATCHES", () => atMost(positiveInteger(env, "DEDUCT_BATCHES", 2), 64, "DEDUCT_BATCHES"), 2),
    workers: read("WORKERS", () => (env.WORKERS === "auto" ? availableParallelism() : Math.min(positiveInteger(env, "WORKERS", 1), 256)), 1),
    autoTopUp: {
      pollMs: read("AUTO_TOP_UP_POLL_MS", () => positiveInteger(env, "AUTO_TOP_UP_POLL_MS", 2_000), 0),
      chargeTimeoutMs: read("AUTO_TOP_UP_CHARGE_TIMEOUT_MS", () => positiveInteger(env, "AUTO_TOP_UP_CHARGE_TIMEOUT_MS", 30_000), 0),
      stripeApiBase: read("STRIPE_API_BASE", () => apiBase(env, "STRIPE_API_BASE", "https://api.stripe.com"), ""),
    },
    webhooks: {
      allowPrivateUrls: read("WEBHOOK_ALLOW_PRIVATE_URLS", () => onOff(env, "WEBHOOK_ALLOW_PRIVATE_URLS", false), false),
      pollMs: read("WEBHOOK_POLL_MS", () => positiveInteger(env, "WEBHOOK_POLL_MS", DEFAULT_WEBHOOK_SETTINGS.pollMs), 0),
      timeoutMs: read("WEBHOOK_TIMEOUT_MS", () => positiveInteger(env, "WEBHOOK_TIMEOUT_MS", DEFAULT_WEBHOOK_SETTINGS.timeoutMs), 0),
      maxAttempts: read("WEBHOOK_MAX_ATTEMPTS", () => Math.min(positiveInteger(env, "WEBHOOK_MAX_ATTEMPTS", DEFAULT_WEBHOOK_SETTINGS.maxAttempts), 1000), 0),
      retryBaseMs: read("WEBHOOK_RETRY_BASE_MS", () => positiveInteger(env, "WEBHOOK_RETRY_BASE_MS", DEFAULT_WEBHOOK_SETTINGS.retryBaseMs), 0),
      retryMaxDelayMs: read("WEBHOOK_RETRY_MAX_DELAY_MS", () => positiveInteger(env, "WEBHOOK_RETRY_MAX_DELAY_MS", DEFAULT_WEBHOOK_SETTINGS.retryMaxDelayMs), 0),
      concurrency: read("WEBHOOK_CONCURRENCY", () => Math.min(positiveInteger(env, "WEBHOOK_CONCURRENCY", DEFAULT_WEBHOOK_SETTINGS.concurrency), 1000), 0),
    },
  };
  if (env.DATABASE_URL) read("DATABASE_URL", () => (config.databaseUrl = checkDatabaseUrl(env.DATABASE_URL!)), "");
  if (env.DATA_DIR) config.dataDir = env.DATA_DIR;
  if (env.BILLING_SECRET_KEY) config.secretKey = env.BILLING_SECRET_KEY;
  if (typeof config.metrics === "number" && config.metrics === config.port) problems.push({ variable: "METRICS_PORT", problem: `is the same port as PORT (${config.port}); leave it unset to serve /metrics on the main port` });
  if (problems.length > 0) throw new ConfigError(problems);
  return config;
}

/** CORS_ORIGINS: "*" or comma-separated origins exactly as browsers send them (scheme://host[:port], no path). */
function parseOrigins(raw: string | undefined): string[] {
  const origins = (raw ?? "").split(",").map((o) => o.trim()).filter((o) => o !== "");
  for (const o of origins) {
    if (o === "*") continue;
    let url: URL;
    try {
      url = new URL(o);
    } catch {
      throw new Error(`${JSON.stringify(o)} is not an origin like https://dashboard.example.com`);
    }
    // Browsers send scheme://host[:port]; app shells send their own schemes (capacitor://localhost, app://…).
    const origin = url.origin !== "null" ? url.origin : `${url.protocol}//${url.host}`;
    if (url.host === "" || origin !== o) {
      throw new Error(`${JSON.stringify(o)} is not an origin as browsers send it (scheme://host[:port], no path or trailing slash)${url.host ? `; did you mean ${JSON.stringify(origin)}?` : ""}`);
    }
  }
  return origins;
}

/** DATABASE_URL: a postgres:// or postgresql:// URL with a database name. */
function checkDatabaseUrl(raw: string): string {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new Error("is not a URL; expected postgres://user:password@host:5432/database");
  }
  if (url.protocol !== "postgres:" && url.protocol !== "postgresql:") throw new Error(`must be a postgres:// URL (got ${url.protocol}//…)`);
  if (url.pathname === "" || url.pathname === "/") throw new Error("names no database; expected postgres://user:password@host:5432/database");
  return raw;
}

/** A positive integer variable, or its default when unset. */
function positiveInteger(env: NodeJS.ProcessEnv, name: string, fallback: number): number {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  // Timers take at most 2^31-1 ms; Node would turn a larger value into 1 ms.
  if (!/^[1-9][0-9]*$/.test(raw) || Number(raw) > 2_147_483_647) throw new Error(`${name} must be a positive integer up to 2147483647 (got ${JSON.stringify(raw)})`);
  return Number(raw);
}

/** `value`, or a configuration error naming `name` when it is above `max`. */
function atMost(value: number, max: number, name: string): number {
  if (value > max) throw new Error(`${name} must be at most ${max} (got ${value})`);
  return value;
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

/** A provider API base URL (http or https, no query or fragment), without a trailing slash; its default when unset. */
function apiBase(env: NodeJS.ProcessEnv, name: string, fallback: string): string {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new Error(`${name} must be a URL like ${fallback} (got ${JSON.stringify(raw)})`);
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") throw new Error(`${name} must be an http(s) URL (got ${url.protocol}//…)`);
  if (url.search || url.hash || url.username || url.password) throw new Error(`${name} must have no query, fragment or credentials`);
  return raw.replace(/\/+$/, "");
}

/** METRICS_PORT: unset serves /metrics on the main port, "" nowhere, a port number on that port. */
function metricsPort(raw: string | undefined): "main" | "off" | number {
  if (raw === undefined) return "main";
  if (raw === "") return "off";
  const port = Number(raw);
  if (!/^\d+$/.test(raw) || port < 1 || port > 65535) throw new Error(`METRICS_PORT must be a port from 1 to 65535, or empty to serve no metrics (got ${JSON.stringify(raw)})`);
  return port;
}
