/**
 * `npm start`: reads and validates the configuration, opens (and migrates)
 * the database, serves the API (from this process, or from WORKERS
 * processes sharing the port), and drains gracefully on SIGTERM/SIGINT.
 * A start-up problem is one JSON log line per cause (naming the variable for
 * configuration problems) and a non-zero exit code.
 */
import { createApp } from "./app.js";
import { ConfigError, loadConfig, type Config } from "./config.js";
import { openDatabase, type OpenDatabase } from "./db/connect.js";
import { createLogger, type Logger } from "./logger.js";
import { serveClusterMetrics } from "./metrics.js";
import cluster from "node:cluster";

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

if ((config.workers ?? 1) > 1 && cluster.isPrimary) await runPrimary(config, config.workers!);
else await runServer(config);

/** The database (started, migrated or checked), or one "cannot start" line and exit code 1. */
async function openDatabaseOrExit(config: Config): Promise<OpenDatabase> {
  try {
    return await openDatabase(config, logger);
  } catch (err) {
    logger.error("cannot start", { problem: err instanceof Error ? err.message : String(err) });
    process.exit(1);
  }
}

/** One server process: the whole service (WORKERS=1), or a worker of the cluster. */
async function runServer(config: Config): Promise<void> {
  const db = await openDatabaseOrExit(config);
  const server = createApp(config, db.sequelize, logger);
  let port: number;
  try {
    port = await server.listen(config.port, config.host);
  } catch (err) {
    logger.error("cannot listen", { variable: "PORT", problem: err instanceof Error ? err.message : String(err), host: config.host, port: config.port });
    await db.close();
    process.exit(1);
  }
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
  // A worker whose primary is gone drains too.
  if (cluster.isWorker) process.on("disconnect", () => void stop("primary gone"));
  process.on("unhandledRejection", (reason) => logger.error("unhandled rejection", { error: reason instanceof Error ? reason.message : String(reason) }));
  // Announced only now: a supervisor that signals as soon as it reads this
  // line must find the handlers above in place (before them, SIGTERM's
  // default action would kill the process without draining).
  logger.info("billing listening", {
    host: config.host,
    port,
    database: config.databaseUrl ? "DATABASE_URL" : `embedded (${db.embedded?.dataDir})`,
    ...(cluster.isWorker ? { worker: cluster.worker?.id } : {}),
  });
}

/**
 * WORKERS > 1: this process starts (and migrates) the database, then runs
 * `workers` server processes that share the port (node:cluster hands out the
 * connections), replaces a worker that dies, answers their requests for the
 * cluster's summed metrics, and on SIGTERM/SIGINT drains every worker before
 * it stops the database.
 */
async function runPrimary(config: Config, workers: number): Promise<void> {
  const db = await openDatabaseOrExit(config);
  const databaseUrl = config.databaseUrl ?? db.embedded!.url();
  await db.sequelize.close(); // the workers have their own pools; the embedded database keeps running
  serveClusterMetrics();
  let stopping = false;
  // Workers connect to the database this process opened, whose schema it has just checked.
  const fork = () => cluster.fork({ DATABASE_URL: databaseUrl, MIGRATE: "off", WORKERS: "1" });
  for (let i = 0; i < workers; i++) fork();
  cluster.on("exit", (worker, code, signal) => {
    if (stopping) return;
    logger.warn("worker exited; starting another", { worker: worker.id, code, signal });
    setTimeout(fork, 500);
  });
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info("draining", { signal, workers: Object.keys(cluster.workers ?? {}).length });
    const running = Object.values(cluster.workers ?? {}).filter((w): w is NonNullable<typeof w> => !!w);
    await Promise.all(
      running.map(
        (w) =>
          new Promise<void>((resolve) => {
            if (w.isDead()) return resolve();
            const kill = setTimeout(() => w.process.kill("SIGKILL"), 20_000);
            w.once("exit", () => (clearTimeout(kill), resolve()));
            w.process.kill("SIGTERM");
          }),
      ),
    );
    await db.close(); // the database stops after every worker
    logger.info("stopped");
    process.exit(0);
  };
  process.on("SIGTERM", () => void stop("SIGTERM"));
  process.on("SIGINT", () => void stop("SIGINT"));
  // After the handlers, as in runServer.
  logger.info("billing cluster started", { workers, database: config.databaseUrl ? "DATABASE_URL" : `embedded (${db.embedded?.dataDir})` });
}
