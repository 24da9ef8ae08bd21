/**
 * Assembles the service from its configuration and an open database:
 * domain services, routes, interceptors and the server. Used by main.ts and
 * by the tests and benchmarks, so they run exactly what production runs.
 */
import type { Sequelize } from "sequelize";
import type { Config } from "./config.js";
import { databaseIsUp } from "./db/database.js";
import { CreditLedger } from "./domain/credits/ledger.js";
import { ModelCatalogue } from "./domain/models/catalogue.js";
import { setPageTokenSecret } from "./domain/pagination.js";
import { createAuthInterceptor } from "./interceptors/auth.js";
import { createLoggingInterceptor } from "./interceptors/logging.js";
import type { Logger } from "./logger.js";
import { createRoutes } from "./routes.js";
import { createBillingServer, type BillingServer } from "./server.js";

/** Builds the server for `config` over `sequelize`. */
export function createApp(config: Config, sequelize: Sequelize, logger: Logger): BillingServer {
  if (config.secretKey) setPageTokenSecret(config.secretKey);
  const ledger = new CreditLedger(sequelize);
  const catalogue = new ModelCatalogue(sequelize);
  const notBuilt = (_req: unknown, res: { writeHead(code: number, headers: Record<string, string>): void; end(body: string): void }) => {
    res.writeHead(501, { "content-type": "application/json" });
    res.end(JSON.stringify({ error: "webhooks are not implemented yet" }));
  };
  return createBillingServer({
    routes: createRoutes({ ledger, catalogue, databaseIsUp: () => databaseIsUp(sequelize) }),
    interceptors: [createLoggingInterceptor(logger), createAuthInterceptor(config.apiKeys)],
    corsOrigins: config.corsOrigins,
    httpRoutes: { "/webhooks/stripe": notBuilt, "/webhooks/paypal": notBuilt },
    logger,
  });
}
