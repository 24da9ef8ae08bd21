/**
 * Prometheus metrics at GET /metrics: a second app (its own registry, so its
 * counts are only what this file did) is called a few times over Connect and
 * gRPC, and the scrape must show exactly those calls, the credits they moved,
 * the batches, the pool, the build and a webhook delivery. METRICS_PORT
 * variants: "off" serves no /metrics, a port number serves it there only.
 */
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { expect } from "chai";
import { readFileSync } from "node:fs";
import path from "node:path";
import { CreditService, CreditTransactionType } from "../../gen/billing/v1/credit_service_pb.js";
import { createApp } from "../../src/app.js";
import type { Config } from "../../src/config.js";
import { PROJECT_ROOT } from "../../src/db/connect.js";
import { createLogger } from "../../src/logger.js";
import type { BillingServer } from "../../src/server.js";
import { TOKENS, errorReason, harness, key, newAccount } from "../harness.js";
import { freePort, parsePrometheus, sampleValue, type Sample } from "./util.js";

const auth = { authorization: `Bearer ${TOKENS.service}` };
const GRANT = "/billing.v1.CreditService/GrantCredits";
const DEDUCT = "/billing.v1.CreditService/DeductCredits";
const BALANCE = "/billing.v1.CreditService/GetBalance";

async function scrape(baseUrl: string): Promise<{ status: number; contentType: string | null; samples: Sample[]; text: string }> {
  const res = await fetch(`${baseUrl}/metrics`);
  const text = await res.text();
  return { status: res.status, contentType: res.headers.get("content-type"), text, samples: res.status === 200 ? parsePrometheus(text) : [] };
}

describe("operations: Prometheus metrics at GET /metrics", function () {
  this.timeout(30_000);

  describe("served on the main port (metrics: \"main\")", () => {
    let app: BillingServer | undefined;
    let baseUrl = "";
    const lines: string[] = [];

    before(async () => {
      const config: Config = { ...harness().config, metrics: "main" };
      app = createApp(config, harness().sequelize, createLogger("info", (line) => lines.push(line)));
      const port = await app.listen(0, "127.0.0.1");
      baseUrl = `http://127.0.0.1:${port}`;
    });

    after(async () => {
      await app?.close(2_000);
    });

    it("answers GET /metrics with the Prometheus text format", async () => {
      const s = await scrape(baseUrl);
      expect(s.status).to.equal(200);
      expect(s.contentType).to.match(/^text\/plain/);
      expect(s.text).to.match(/^# HELP billing_/m);
      expect(s.text).to.match(/^# TYPE billing_rpc_requests_total counter$/m);
    });

    it("counts each RPC by procedure, protocol and code, with latency histograms, and the credits granted and deducted", async () => {
      const before = (await scrape(baseUrl)).samples;
      const connect = createClient(CreditService, createConnectTransport({ baseUrl, httpVersion: "1.1" }));
      const grpc = createClient(CreditService, createGrpcTransport({ baseUrl }));
      const account = newAccount("metrics");

      const granted = await connect.grantCredits({ accountId: account, amount: 500n, type: CreditTransactionType.PURCHASE, idempotencyKey: key() }, { headers: auth });
      expect(granted.balance?.balance).to.equal(500n);
      const deducted = await grpc.deductCredits({ accountId: account, operationType: "clustering", usage: { credits: 7n }, idempotencyKey: key() }, { headers: auth });
      const charged = -deducted.transaction!.amount;
      expect(charged > 0n, "the OK deduction charged something").to.equal(true);
      let refused: unknown;
      try {
        await connect.deductCredits({ accountId: account, operationType: "clustering", usage: { credits: 100_000n }, idempotencyKey: key() }, { headers: auth });
      } catch (e) {
        refused = e;
      }
      expect(refused).to.be.instanceOf(ConnectError);
      expect(Code[(refused as ConnectError).code]).to.equal("FailedPrecondition");
      expect(errorReason(refused as ConnectError)).to.equal("INSUFFICIENT_CREDITS");
      await grpc.getBalance({ accountId: account }, { headers: auth });
      await connect.getBalance({ accountId: account }, { headers: auth });

      const after = (await scrape(baseUrl)).samples;
      const delta = (name: string, labels: Record<string, string> = {}) => sampleValue(after, name, labels) - sampleValue(before, name, labels);
      const rpc = (procedure: string, protocol: string, code: string) => delta("billing_rpc_requests_total", { procedure, protocol, code });

      expect(rpc(GRANT, "connect", "ok"), "GrantCredits connect ok").to.equal(1);
      expect(rpc(DEDUCT, "grpc", "ok"), "DeductCredits grpc ok").to.equal(1);
      expect(rpc(DEDUCT, "connect", "failed_precondition"), "DeductCredits connect failed_precondition").to.equal(1);
      expect(rpc(BALANCE, "grpc", "ok"), "GetBalance grpc ok").to.equal(1);
      expect(rpc(BALANCE, "connect", "ok"), "GetBalance connect ok").to.equal(1);
      // Nothing else moved: exactly the five calls made.
      expect(delta("billing_rpc_requests_total"), "all RPC series together").to.equal(5);
      // The series are labelled by code name (snake case), not by number.
      const codes = new Set(after.filter((s) => s.name === "billing_rpc_requests_total").map((s) => s.labels.code));
      for (const c of codes) expect(c).to.match(/^[a-z_]+$/);

      // Latency histograms: a _count, _sum and +Inf bucket per procedure and protocol.
      expect(delta("billing_rpc_duration_seconds_count", { procedure: BALANCE, protocol: "grpc" })).to.equal(1);
      expect(delta("billing_rpc_duration_seconds_count", { procedure: BALANCE, protocol: "connect" })).to.equal(1);
      expect(delta("billing_rpc_duration_seconds_count", { procedure: DEDUCT, protocol: "connect" })).to.equal(1);
      expect(delta("billing_rpc_duration_seconds_count"), "every call observed once").to.equal(5);
      expect(delta("billing_rpc_duration_seconds_bucket", { procedure: GRANT, protocol: "connect", le: "+Inf" })).to.equal(1);
      expect(delta("billing_rpc_duration_seconds_sum", { procedure: GRANT, protocol: "connect" })).to.be.greaterThan(0);

      // Credits moved: the grant and the one charged deduction (the refused one moved nothing).
      expect(delta("billing_credits_total", { kind: "granted" }), "credits granted").to.equal(500);
      expect(delta("billing_credits_total", { kind: "deducted" }), "credits deducted").to.equal(Number(charged));
      expect(delta("billing_credits_total", { kind: "expired" }), "credits expired").to.equal(0);

      // Deductions go through coalesced batches: at least the OK one was in one.
      expect(delta("billing_deduction_batch_size_count"), "batches observed").to.be.at.least(1);
      expect(delta("billing_deduction_batch_size_sum"), "deductions in batches").to.be.at.least(1);
    });

    it("reports the database pool by state and the build (version and node)", async () => {
      const { samples } = await scrape(baseUrl);
      const pool = samples.filter((s) => s.name === "billing_db_pool_connections");
      expect(pool.map((s) => s.labels.state)).to.include.members(["in_use", "idle", "waiting"]);
      for (const s of pool) expect(s.value, `pool ${s.labels.state}`).to.be.at.least(0);
      const version = (JSON.parse(readFileSync(path.join(PROJECT_ROOT, "package.json"), "utf8")) as { version: string }).version;
      const build = samples.filter((s) => s.name === "billing_build_info");
      expect(build).to.have.length(1);
      expect(build[0]!.labels).to.deep.equal({ version, node: process.version });
      expect(build[0]!.value).to.equal(1);
      // Default process metrics carry the billing_process_ prefix.
      expect(samples.some((s) => s.name.startsWith("billing_process_"))).to.equal(true);
    });

    it("counts a webhook delivery with a bad signature by provider and outcome", async () => {
      const before = (await scrape(baseUrl)).samples;
      const body = JSON.stringify({ id: "evt_ops_metrics", type: "payment_intent.succeeded", data: { object: { id: "pi_x" } } });
      const res = await fetch(`${baseUrl}/webhooks/stripe`, { method: "POST", headers: { "content-type": "application/json", "stripe-signature": "t=1,v1=deadbeef" }, body });
      expect(res.status).to.equal(400);
      const outcome = ((await res.json()) as { outcome: string }).outcome;
      expect(outcome).to.be.oneOf(["rejected_signature", "rejected_no_webhook_secret"]);
      const after = (await scrape(baseUrl)).samples;
      const delta = (labels: Record<string, string>) => sampleValue(after, "billing_webhook_deliveries_total", labels) - sampleValue(before, "billing_webhook_deliveries_total", labels);
      expect(delta({ provider: "stripe", outcome }), `billing_webhook_deliveries_total{provider="stripe",outcome="${outcome}"}`).to.equal(1);
      expect(delta({}), "all webhook series together").to.equal(1);
    });
  });

  describe("METRICS_PORT", () => {
    it("metrics: \"off\" serves no /metrics (404) while the API still answers", async () => {
      const app = createApp({ ...harness().config, metrics: "off" }, harness().sequelize, createLogger("silent"));
      const port = await app.listen(0, "127.0.0.1");
      try {
        const res = await fetch(`http://127.0.0.1:${port}/metrics`);
        expect(res.status).to.equal(404);
        await res.arrayBuffer();
        const health = await fetch(`http://127.0.0.1:${port}/healthz`);
        expect(health.status).to.equal(200);
        await health.arrayBuffer();
      } finally {
        await app.close(2_000);
      }
    });

    it("metrics: <port> serves /metrics on that port only (404 on the main port)", async () => {
      const metricsPort = await freePort();
      const app = createApp({ ...harness().config, metrics: metricsPort }, harness().sequelize, createLogger("silent"));
      const port = await app.listen(0, "127.0.0.1");
      try {
        expect(port).to.not.equal(metricsPort);
        const c = createClient(CreditService, createConnectTransport({ baseUrl: `http://127.0.0.1:${port}`, httpVersion: "1.1" }));
        await c.getBalance({ accountId: newAccount("mport") }, { headers: auth });

        const own = await scrape(`http://127.0.0.1:${metricsPort}`);
        expect(own.status, "GET /metrics on the metrics port").to.equal(200);
        expect(own.contentType).to.match(/^text\/plain/);
        expect(sampleValue(own.samples, "billing_build_info")).to.equal(1);
        expect(sampleValue(own.samples, "billing_rpc_requests_total", { procedure: BALANCE, protocol: "connect", code: "ok" })).to.equal(1);

        const main = await fetch(`http://127.0.0.1:${port}/metrics`);
        expect(main.status, "GET /metrics on the main port").to.equal(404);
        await main.arrayBuffer();
        // The metrics port serves nothing else (no API, no probes).
        const other = await fetch(`http://127.0.0.1:${metricsPort}/healthz`);
        expect(other.status, "GET /healthz on the metrics port").to.equal(404);
        await other.arrayBuffer();
      } finally {
        await app.close(2_000);
      }
      // Closing the app frees the metrics port too.
      await new Promise<void>((resolve, reject) => {
        import("node:net").then(({ default: net }) => {
          const s = net.createServer();
          s.once("error", reject);
          s.listen(metricsPort, "127.0.0.1", () => s.close(() => resolve()));
        }, reject);
      });
    });
  });
});
