/**
 * Assembles the service from its configuration and an open database:
 * domain services, routes, interceptors and the server. Used by main.ts and
 * by the tests and benchmarks, so they run exactly what production runs.
 */
import type { Sequelize } from "sequelize";
import { DEFAULT_WEBHOOK_SETTINGS, type Config } from "./config.js";
import { databaseIsUp } from "./db/database.js";
import { BalanceNotifications } from "./db/notifications.js";
import { CreditLedger } from "./domain/credits/ledger.js";
import { CreditLots } from "./domain/credits/lots.js";
import { CreditPackages } from "./domain/credits/packages.js";
import { PlanLimits } from "./domain/credits/plan-limits.js";
import { Pricing } from "./domain/credits/pricing.js";
import { Reservations } from "./domain/credits/reservations.js";
import { UsageReports } from "./domain/credits/usage.js";
import { purgeIdempotencyKeys } from "./domain/idempotency.js";
import { Invoices } from "./domain/invoices/invoices.js";
import { ModelCatalogue } from "./domain/models/catalogue.js";
import { PaymentMethods } from "./domain/payments/payment-methods.js";
import { Payments } from "./domain/payments/payments.js";
import { SecretBox } from "./domain/payments/secrets.js";
import { Webhooks } from "./domain/payments/webhooks.js";
import { createWebhookRoutes } from "./handlers/webhooks.js";
import { setPageTokenSecret } from "./domain/pagination.js";
import { createAuthInterceptor } from "./interceptors/auth.js";
import { createLoggingInterceptor } from "./interceptors/logging.js";
import type { Logger } from "./logger.js";
import { createRoutes } from "./routes.js";
import { Events } from "./domain/events/events.js";
import { EventFeed } from "./domain/events/feed.js";
import { WebhookDelivery } from "./domain/events/webhook-delivery.js";
import { WebhookEndpoints } from "./domain/events/webhook-endpoints.js";
import { eventJson } from "./handlers/event-service.js";
import { Counter } from "prom-client";
import { BalanceAlerts } from "./domain/automation/balance-alerts.js";
import { AutoTopUps } from "./domain/automation/auto-top-up.js";
import { AutoTopUpWorker } from "./domain/automation/auto-top-up-worker.js";
import { createBillingServer, type BillingServer, type Lifecycle } from "./server.js";
import { Metrics, type PoolStats } from "./metrics.js";
import { createMetricsRoute, createProbeRoutes } from "./handlers/probes.js";
import { pendingMigrations } from "./db/migrate.js";
import { PROJECT_ROOT } from "./db/connect.js";
import http from "node:http";
import { readFileSync } from "node:fs";
import path from "node:path";

const VERSION = (JSON.parse(readFileSync(path.join(PROJECT_ROOT, "package.json"), "utf8")) as { version: string }).version;

/** The database pool right now (sequelize-pool's counters). */
function poolStats(sequelize: Sequelize): PoolStats | undefined {
  const pool = (sequelize.connectionManager as unknown as { pool?: { size: number; using: number; waiting: number } }).pool;
  return pool ? { size: pool.size, using: pool.using, waiting: pool.waiting } : undefined;
}

/** How often lots and reservations past their expiry are swept, unless configured. */
const SWEEP_MS = 30_000;

/** Builds the server for `config` over `sequelize`. */
export function createApp(config: Config, sequelize: Sequelize, logger: Logger): BillingServer {
  if (config.secretKey) setPageTokenSecret(config.secretKey);
  const lifecycle: Lifecycle = { draining: false };
  const metrics = config.metrics === "off" ? undefined : new Metrics({ version: VERSION, pool: () => poolStats(sequelize) });
  metrics?.shareWithPrimary();
  const catalogue = new ModelCatalogue(sequelize);
  const pricing = new Pricing(sequelize, catalogue);
  const notifications = new BalanceNotifications(sequelize, logger);
  const ledger = new CreditLedger(sequelize, pricing, (accountId) => notifications.announce(accountId), metrics, config.deductBatches);
  const packages = new CreditPackages(sequelize);
  const credit = {
    ledger,
    pricing,
    reservations: new Reservations(sequelize, ledger, pricing),
    planLimits: new PlanLimits(sequelize),
    packages,
    usage: new UsageReports(sequelize),
    notifications,
    lots: new CreditLots(sequelize, ledger),
  };
  const invoices = new Invoices(sequelize, packages);
  const payments = new Payments(sequelize, invoices, ledger);
  const paymentMethods = new PaymentMethods(sequelize, new SecretBox(config.secretKey));
  const webhooks = new Webhooks(sequelize, payments, paymentMethods);
  const events = new Events(sequelize);
  // Outbound webhooks: endpoints through the API, deliveries by a worker in every replica (README, "Webhooks out").
  const webhookSettings = { ...DEFAULT_WEBHOOK_SETTINGS, ...config.webhooks };
  const signingSecrets = new SecretBox(config.secretKey);
  const webhookOutcomes = metrics && new Counter({ name: "billing_webhook_out_attempts_total", help: "Outbound webhook attempts, by outcome (delivered, retrying, failed, skipped)", labelNames: ["outcome"], registers: [metrics.registry] });
  const webhookDelivery = new WebhookDelivery(sequelize, {
    settings: webhookSettings,
    events,
    secrets: signingSecrets,
    render: eventJson,
    log: logger,
    onOutcome: (outcome) => webhookOutcomes?.inc({ outcome }),
    userAgent: `billing-webhooks/${VERSION}`,
  });
  const eventDeps = { events, feed: new EventFeed(events), webhookEndpoints: new WebhookEndpoints(sequelize, signingSecrets, events, webhookSettings.allowPrivateUrls) };
  const automationDeps = { alerts: new BalanceAlerts(sequelize), autoTopUps: new AutoTopUps(sequelize) };
  // Auto top-up: a worker in every replica charges the attempts the balance trigger starts (README, "Auto top-up").
  const autoTopUpWorker = config.autoTopUp
    ? new AutoTopUpWorker(sequelize, invoices, payments, paymentMethods, logger, {
        pollMs: config.autoTopUp.pollMs,
        chargeTimeoutMs: config.autoTopUp.chargeTimeoutMs,
        apiBases: { stripe: config.autoTopUp.stripeApiBase },
      })
    : undefined;
  const serving = async () => !lifecycle.draining && (await databaseIsUp(sequelize));
  const probes = createProbeRoutes({ lifecycle, databaseIsUp: () => databaseIsUp(sequelize), pendingMigrations: () => pendingMigrations(sequelize) });
  const metricsRoute = metrics ? createMetricsRoute(metrics) : undefined;
  const server = createBillingServer({
    routes: createRoutes({ credit, catalogue, invoices, payments, paymentMethods, events: eventDeps, automation: automationDeps, databaseIsUp: serving }),
    interceptors: [createLoggingInterceptor(logger, metrics, lifecycle), createAuthInterceptor(config.apiKeys)],
    corsOrigins: config.corsOrigins,
    httpRoutes: { ...createWebhookRoutes(webhooks, logger, metrics), ...probes, ...(metricsRoute && config.metrics === "main" ? { "/metrics": metricsRoute } : {}) },
    logger,
    limits: config.serverLimits,
    unaryFastPath: config.unaryFastPath,
    lifecycle,
  });
  // METRICS_PORT: /metrics on a port of its own (e.g. reachable only from the scraper's network).
  const metricsServer = metricsRoute && typeof config.metrics === "number" ? http.createServer((req, res) => void (req.url?.split("?")[0] === "/metrics" && req.method === "GET" ? metricsRoute.handle(req, res) : res.writeHead(404).end())) : undefined;
  // Idempotency keys are kept at least 24 hours; older ones are purged hourly.
  let purgeTimer: NodeJS.Timeout | undefined;
  // Lots past their expiry leave balances lazily on every read and debit;
  // the sweeper writes their EXPIRATION entries for accounts nobody touches.
  let sweepTimer: NodeJS.Timeout | undefined;
  const sweep = () =>
    credit.lots
      .expireDue()
      .then((accounts) => accounts.forEach((a) => notifications.announce(a)))
      .then(() => credit.lots.warnExpiring(config.lotExpiryWarningMs ?? 72 * 3_600_000))
      .then(() => credit.reservations.expireDue())
      .catch((err: unknown) => logger.warn("expiry sweep failed", { error: err instanceof Error ? err.message : String(err) }));
  const purge = () =>
    purgeIdempotencyKeys(sequelize).then(
      (n) => n > 0 && logger.info("purged idempotency keys", { count: n }),
      (err: unknown) => logger.warn("idempotency key purge failed", { error: err instanceof Error ? err.message : String(err) }),
    );
  return {
    async listen(port, host) {
      const bound = await server.listen(port, host);
      if (metricsServer) await new Promise<void>((resolve, reject) => metricsServer.once("error", reject).listen(config.metrics as number, host, () => resolve()));
      purgeTimer = setInterval(purge, 60 * 60 * 1000).unref();
      sweepTimer = setInterval(sweep, config.sweepIntervalMs ?? SWEEP_MS).unref();
      webhookDelivery.start();
      autoTopUpWorker?.start();
      return bound;
    },
    async close(graceMs) {
      clearInterval(purgeTimer);
      clearInterval(sweepTimer);
      // Sends in flight get the same grace as calls in flight; the rest are retried later (by any replica).
      await Promise.all([server.close(graceMs), webhookDelivery.stop(graceMs), autoTopUpWorker?.stop()]);
      metricsServer?.close();
      await notifications.close();
    },
  };
}
