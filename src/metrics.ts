/**
 * Prometheus metrics (prom-client), one registry per server so that several
 * servers in one process (tests) keep their own counts. Served as text at
 * GET /metrics (README, "Operating").
 */
import cluster from "node:cluster";
import { randomUUID } from "node:crypto";
import { AggregatorRegistry, Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import type { LedgerMeter } from "./domain/credits/meter.js";

/** What the database pool looks like right now. */
export interface PoolStats {
  size: number;
  using: number;
  waiting: number;
}

export class Metrics implements LedgerMeter {
  readonly registry = new Registry();
  private readonly rpcs: Counter<"procedure" | "protocol" | "code">;
  private readonly rpcSeconds: Histogram<"procedure" | "protocol">;
  private readonly creditsMoved: Counter<"kind">;
  private readonly batchSizes: Histogram;
  private readonly queueWait: Histogram;
  private readonly webhooks: Counter<"provider" | "outcome">;

  constructor(options: { version: string; pool?: () => PoolStats | undefined }) {
    const registers = [this.registry];
    this.rpcs = new Counter({ name: "billing_rpc_requests_total", help: "RPCs answered, by procedure, protocol and status code", labelNames: ["procedure", "protocol", "code"], registers });
    this.rpcSeconds = new Histogram({
      name: "billing_rpc_duration_seconds",
      help: "RPC latency from the first byte of the request to the answer",
      labelNames: ["procedure", "protocol"],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
    this.creditsMoved = new Counter({ name: "billing_credits_total", help: "Credits granted, deducted (every debit) and expired", labelNames: ["kind"], registers });
    this.batchSizes = new Histogram({ name: "billing_deduction_batch_size", help: "Deductions applied per coalesced batch", buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512], registers });
    this.queueWait = new Histogram({
      name: "billing_deduction_queue_wait_seconds",
      help: "How long a deduction waited for its batch to start",
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
      registers,
    });
    this.webhooks = new Counter({ name: "billing_webhook_deliveries_total", help: "Provider webhook deliveries, by provider and outcome", labelNames: ["provider", "outcome"], registers });
    const pool = options.pool;
    new Gauge({
      name: "billing_db_pool_connections",
      help: "Database pool connections by state (in_use, idle) and callers waiting for one (waiting)",
      labelNames: ["state"],
      registers,
      collect() {
        const s = pool?.();
        if (!s) return;
        this.set({ state: "in_use" }, s.using);
        this.set({ state: "idle" }, Math.max(0, s.size - s.using));
        this.set({ state: "waiting" }, s.waiting);
      },
    });
    new Gauge({ name: "billing_build_info", help: "Build information (always 1)", labelNames: ["version", "node"], registers }).set({ version: options.version, node: process.version }, 1);
    collectDefaultMetrics({ register: this.registry, prefix: "billing_process_" });
  }

  /** One answered RPC. */
  rpc(procedure: string, protocol: string, code: string, seconds: number): void {
    this.rpcs.inc({ procedure, protocol, code });
    this.rpcSeconds.observe({ procedure, protocol }, seconds);
  }

  credits(kind: "granted" | "deducted" | "expired", amount: bigint): void {
    if (amount > 0n) this.creditsMoved.inc({ kind }, Number(amount));
  }

  batch(size: number, waitMs: number[]): void {
    this.batchSizes.observe(size);
    for (const w of waitMs) this.queueWait.observe(w / 1000);
  }

  /** One webhook delivery and what came of it. */
  webhook(provider: string, outcome: string): void {
    this.webhooks.inc({ provider, outcome });
  }

  /**
   * The Prometheus text exposition. In a cluster (WORKERS > 1) every worker's
   * counts are summed by the primary, whichever worker the scrape reached.
   */
  async text(): Promise<{ contentType: string; body: string }> {
    if (cluster.isWorker && process.send) return { contentType: this.registry.contentType, body: await askPrimary() };
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }

  /** In a worker: lets the primary collect this registry (AggregatorRegistry). */
  shareWithPrimary(): void {
    if (!cluster.isWorker) return;
    new AggregatorRegistry(); // installs prom-client's worker-side listener
    AggregatorRegistry.setRegistries([this.registry]);
  }
}

/** IPC between a worker that was scraped and the primary that sums every worker's metrics. */
export const METRICS_REQUEST = "billing:metrics-request";
export const METRICS_RESPONSE = "billing:metrics-response";

function askPrimary(): Promise<string> {
  const id = randomUUID();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      process.off("message", onMessage);
      reject(new Error("the primary did not answer with the cluster's metrics"));
    }, 5_000);
    const onMessage = (m: { type?: string; id?: string; body?: string; error?: string }) => {
      if (m?.type !== METRICS_RESPONSE || m.id !== id) return;
      clearTimeout(timer);
      process.off("message", onMessage);
      if (m.error) reject(new Error(m.error));
      else resolve(m.body ?? "");
    };
    process.on("message", onMessage);
    process.send!({ type: METRICS_REQUEST, id });
  });
}

/** In the primary: answers workers' requests for the cluster's metrics. */
export function serveClusterMetrics(): void {
  const aggregator = new AggregatorRegistry();
  cluster.on("message", (worker, m: { type?: string; id?: string }) => {
    if (m?.type !== METRICS_REQUEST) return;
    aggregator.clusterMetrics().then(
      (body) => worker.send({ type: METRICS_RESPONSE, id: m.id, body }),
      (err: unknown) => worker.send({ type: METRICS_RESPONSE, id: m.id, error: err instanceof Error ? err.message : String(err) }),
    );
  });
}
