/**
 * WORKERS=2: two server processes share one port (node:cluster) over one
 * database; calls land on both, the metrics of the cluster add up whichever
 * worker is scraped, and SIGTERM drains both before the process exits 0.
 */
import { createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { expect } from "chai";
import { CreditService, CreditTransactionType } from "../../gen/billing/v1/credit_service_pb.js";
import { harness, key, newAccount } from "../harness.js";
import { freePort, parsePrometheus, sampleValue, spawnService, type ServiceProcess } from "./util.js";

const TOKEN = "tok_workers_admin";

describe("operations: WORKERS=2 (node:cluster)", function () {
  this.timeout(60_000);
  let svc: ServiceProcess | undefined;
  let port = 0;

  before(async () => {
    port = await freePort();
    svc = spawnService({ DATABASE_URL: harness().databaseUrl, PORT: String(port), WORKERS: "2", BILLING_API_KEYS: `admin=${TOKEN}`, LOG_LEVEL: "info" });
    // Both workers listen before the test calls them.
    let listening = 0;
    await svc.waitForLine((l) => l.msg === "billing listening" && ++listening >= 2, 30_000);
  });
  after(() => svc?.kill());

  it("serves calls from both workers over both protocols, and the ledger adds up", async () => {
    const account = newAccount("workers");
    const baseUrl = `http://127.0.0.1:${port}`;
    const headers = { authorization: `Bearer ${TOKEN}` };
    const grpc = createClient(CreditService, createGrpcTransport({ baseUrl }));
    await grpc.grantCredits({ accountId: account, amount: 1000n, type: CreditTransactionType.ADJUSTMENT, idempotencyKey: key() }, { headers });
    // Fresh HTTP/1.1 connections are spread over the workers by the primary.
    const calls: Promise<unknown>[] = [];
    for (let i = 0; i < 40; i++) {
      const connect = createClient(CreditService, createConnectTransport({ baseUrl, httpVersion: "1.1", nodeOptions: { agent: false } }));
      calls.push(connect.deductCredits({ accountId: account, operationType: "linking", usage: { credits: 1n }, idempotencyKey: key() }, { headers }));
    }
    await Promise.all(calls);
    const balance = await grpc.getBalance({ accountId: account }, { headers });
    expect(balance.balance?.balance).to.equal(960n);
    const workers = new Set(svc!.jsonLines().filter((l) => l.msg === "billing listening").map((l) => l.worker));
    expect(workers.size, "two workers listening").to.equal(2);
  });

  it("answers /metrics with the whole cluster's counts, whichever worker is scraped", async () => {
    const scrape = async () => parsePrometheus(await (await fetch(`http://127.0.0.1:${port}/metrics`, { headers: { connection: "close" } })).text());
    const deducted = (s: ReturnType<typeof parsePrometheus>) => sampleValue(s, "billing_rpc_requests_total", { procedure: "/billing.v1.CreditService/DeductCredits", code: "ok" });
    const first = await scrape();
    const second = await scrape();
    expect(deducted(first), "40 deductions, summed over the workers").to.equal(40);
    expect(deducted(second)).to.equal(40);
    expect(sampleValue(first, "billing_credits_total", { kind: "deducted" })).to.equal(40);
  });

  it("drains both workers on SIGTERM and exits 0", async () => {
    svc!.child.kill("SIGTERM");
    const exit = await svc!.exited;
    expect(exit.code, svc!.stdout()).to.equal(0);
    const stopped = svc!.jsonLines().filter((l) => l.msg === "stopped");
    expect(stopped.length, "two workers and the primary say stopped").to.equal(3);
    expect(svc!.jsonLines().filter((l) => l.level === "error"), svc!.stdout()).to.deep.equal([]);
  });
});
