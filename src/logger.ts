/**
 * Structured JSON logging, one line per event on stdout, through pino.
 *
 * Callers pass plain fields. Bearer tokens and provider secrets are redacted
 * wherever they appear in the fields (authorization headers, api keys,
 * webhook secrets), and the request log logs the key's name only. Child
 * loggers carry a call's request and trace ids on every line.
 */
import { pino, stdTimeFunctions, type Logger as Pino } from "pino";

export type LogLevel = "debug" | "info" | "warn" | "error" | "silent";

export const LOG_LEVELS: readonly LogLevel[] = ["debug", "info", "warn", "error", "silent"];

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
  /** A logger whose every line also carries `bindings` (e.g. request_id). */
  child(bindings: Record<string, unknown>): Logger;
  /** Whether lines at `level` are written (to skip building them). */
  enabled(level: "debug" | "info" | "warn" | "error"): boolean;
}

/** Field names whose values never reach a log line. */
const REDACT = ["authorization", "api_key", "api_secret", "webhook_secret", "apiKey", "apiSecret", "webhookSecret", "token", "password", "secret"];

/** Creates a logger writing JSON lines at or above `level` (to `write`, or stdout). */
export function createLogger(level: LogLevel, write?: (line: string) => void): Logger {
  const destination = write ? { write: (line: string) => write(line.replace(/\n$/, "")) } : pino.destination({ fd: 1, sync: true });
  const base = pino(
    {
      level,
      base: undefined,
      timestamp: stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      redact: { paths: REDACT.flatMap((f) => [f, `*.${f}`, `*.*.${f}`]), censor: "[redacted]" },
    },
    destination,
  );
  return wrap(base);
}

function wrap(p: Pino): Logger {
  const at = (lvl: "debug" | "info" | "warn" | "error") => (msg: string, fields?: Record<string, unknown>) => {
    if (!p.isLevelEnabled(lvl)) return;
    if (fields) p[lvl](plain(fields) as object, msg);
    else p[lvl](msg);
  };
  return {
    debug: at("debug"),
    info: at("info"),
    warn: at("warn"),
    error: at("error"),
    child: (bindings) => wrap(p.child(plain(bindings) as object)),
    enabled: (lvl) => p.isLevelEnabled(lvl),
  };
}

/** Fields as JSON can hold them: bigint as a string, errors as name/message/stack. */
function plain(value: unknown): unknown {
  if (typeof value === "bigint") return value.toString();
  if (value instanceof Error) return { name: value.name, message: value.message, stack: value.stack };
  if (Array.isArray(value)) return value.map(plain);
  if (value && typeof value === "object" && Object.getPrototypeOf(value) === Object.prototype) {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[k] = plain(v);
    return out;
  }
  return value;
}

/** Parses LOG_LEVEL (unset: "info"); anything else is an error naming the variable. */
export function parseLogLevel(value: string | undefined): LogLevel {
  const v = (value ?? "").toLowerCase() || "info";
  if (!(LOG_LEVELS as readonly string[]).includes(v)) throw new Error(`LOG_LEVEL must be one of ${LOG_LEVELS.join(", ")} (got ${JSON.stringify(value)})`);
  return v as LogLevel;
}
