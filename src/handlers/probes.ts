/**
 * Plain HTTP probes for load balancers that cannot speak gRPC health, and
 * the Prometheus scrape:
 * - GET /healthz: 200 while the process is up;
 * - GET /readyz: 200 when the database answers, the schema is current and
 *   the server is not draining; 503 with the reasons otherwise;
 * - GET /metrics: the Prometheus text format.
 */
import type { Metrics } from "../metrics.js";
import type { Lifecycle, PlainRoute } from "../server.js";

export function createProbeRoutes(deps: { lifecycle: Lifecycle; databaseIsUp: () => Promise<boolean>; pendingMigrations: () => Promise<string[]> }): Record<string, PlainRoute> {
  return {
    "/healthz": {
      method: "GET",
      handle: (_req, res) => {
        res.writeHead(200, { "content-type": "application/json", "cache-control": "no-store" });
        res.end(JSON.stringify({ status: "ok" }));
      },
    },
    "/readyz": {
      method: "GET",
      handle: async (_req, res) => {
        const reasons: string[] = [];
        if (deps.lifecycle.draining) reasons.push("draining");
        if (!(await deps.databaseIsUp())) reasons.push("database_unreachable");
        else {
          const pending = await withTimeout(deps.pendingMigrations(), 1_000).catch(() => undefined);
          if (pending === undefined) reasons.push("schema_unknown");
          else if (pending.length > 0) reasons.push(`schema_outdated: ${pending.join(", ")}`);
        }
        res.writeHead(reasons.length === 0 ? 200 : 503, { "content-type": "application/json", "cache-control": "no-store" });
        res.end(JSON.stringify(reasons.length === 0 ? { status: "ready" } : { status: "not_ready", reasons }));
      },
    },
  };
}

export function createMetricsRoute(metrics: Metrics): PlainRoute {
  return {
    method: "GET",
    handle: async (_req, res) => {
      const { contentType, body } = await metrics.text();
      res.writeHead(200, { "content-type": contentType, "cache-control": "no-store" });
      res.end(body);
    },
  };
}

/** `promise`, or a rejection after `ms` (a probe must answer even when the pool is exhausted). */
function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([promise, new Promise<T>((_, reject) => (timer = setTimeout(() => reject(new Error("timeout")), ms)))]).finally(() => clearTimeout(timer));
}
