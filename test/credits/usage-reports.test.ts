/**
 * Usage logs and summaries through the API, and WatchBalance streaming
 * changes made through this server and through another server instance.
 */
import { Code, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { expect } from "chai";
import { CreditService, CreditTransactionType, UsageGroupBy } from "../../gen/billing/v1/credit_service_pb.js";
import { createApp } from "../../src/app.js";
import { createSequelize } from "../../src/db/database.js";
import { createLogger } from "../../src/logger.js";
import { TOKENS, badFields, client, expectError, harness, key, newAccount } from "../harness.js";
import { ensureModel } from "./ledger.test.js";

const svc = () => client(CreditService, TOKENS.service);

describe("CreditService usage reports", () => {
  let account: string;
  before(async () => {
    await ensureModel("gpt-4o-mini", { inputCostPer1m: "0.1500", outputCostPer1m: "0.6000" });
    account = newAccount("usage");
    await svc().grantCredits({ accountId: account, amount: 1000n, type: CreditTransactionType.PURCHASE, idempotencyKey: key() });
    const charges: [string, bigint, bigint, string][] = [
      ["content", 1000n, 500n, "gpt-4o-mini"],
      ["content_generation", 2000n, 1000n, "gpt-4o-mini"],
      ["clustering", 300n, 0n, ""],
    ];
    for (const [op, tin, tout, model] of charges) {
      await svc().deductCredits({ accountId: account, operationType: op, usage: { tokensInput: tin, tokensOutput: tout, model }, idempotencyKey: key() });
    }
  });

  it("lists usage logs newest first, filtered by operation (legacy names too)", async () => {
    const all = await svc().listUsageLogs({ accountId: account });
    expect(all.usageLogs.map((l) => l.operationType)).to.deep.equal(["clustering", "content_generation", "content_generation"]);
    const content = await svc().listUsageLogs({ accountId: account, operationType: "content", pageSize: 1 });
    expect(content.usageLogs).to.have.length(1);
    const next = await svc().listUsageLogs({ accountId: account, operationType: "content", pageSize: 1, pageToken: content.nextPageToken });
    expect(next.usageLogs[0]?.tokensInput).to.equal(1000n);
    expect(next.nextPageToken).to.equal("");
  });

  it("sums credits, cost and tokens per operation, model and day in SQL", async () => {
    const byOp = await svc().getUsageSummary({ accountId: account, groupBy: UsageGroupBy.OPERATION });
    expect(byOp.groups.map((g) => g.key)).to.deep.equal(["clustering", "content_generation"]);
    const content = byOp.groups[1]!;
    // 15 + 30 credits; cost (1000x0.15+500x0.6)/1M=0.00045 -> 0.0005 and (2000x0.15+1000x0.6)/1M=0.0009
    expect(content).to.include({ operations: 2n, credits: 45n, costUsd: "0.0014", tokensInput: 3000n, tokensOutput: 1500n });
    expect(byOp.total).to.include({ key: "", operations: 3n, credits: 48n, tokensInput: 3300n });
    const byModel = await svc().getUsageSummary({ accountId: account, groupBy: UsageGroupBy.MODEL });
    expect(byModel.groups.map((g) => g.key)).to.deep.equal(["", "gpt-4o-mini"]);
    const byDay = await client(CreditService, TOKENS.admin).getUsageSummary({ accountId: account, groupBy: UsageGroupBy.DAY });
    expect(byDay.groups).to.have.length(1);
    expect(byDay.groups[0]!.key).to.equal(new Date().toISOString().slice(0, 10));
    const empty = await svc().getUsageSummary({ accountId: account, groupBy: UsageGroupBy.OPERATION, startTime: { seconds: BigInt(Math.floor(Date.now() / 1000) + 3600), nanos: 0 } });
    expect(empty.groups).to.deep.equal([]);
    expect(empty.total).to.include({ operations: 0n, costUsd: "0.0000" });
  });

  it("rejects a missing group_by and keeps accounts to their own usage", async () => {
    const err = await expectError(svc().getUsageSummary({ accountId: account }), Code.InvalidArgument);
    expect(badFields(err)).to.deep.equal(["group_by"]);
    await expectError(client(CreditService, TOKENS.accountA).getUsageSummary({ accountId: "", groupBy: UsageGroupBy.DAY }), Code.PermissionDenied);
    await expectError(client(CreditService, TOKENS.accountA).listUsageLogs({ accountId: account }), Code.PermissionDenied);
    const own = await client(CreditService, TOKENS.accountA).getUsageSummary({ accountId: "acct_a", groupBy: UsageGroupBy.DAY });
    expect(own.total).to.not.equal(undefined);
  });
});

describe("CreditService WatchBalance", function () {
  this.timeout(20_000);

  async function next<T>(it: AsyncIterator<T>, ms = 5_000): Promise<T> {
    const timeout = new Promise<never>((_, reject) => setTimeout(() => reject(new Error("no message in time")), ms));
    const r = await Promise.race([it.next(), timeout]);
    if (r.done) throw new Error("stream ended");
    return r.value;
  }

  it("sends the balance now, then each change, and ends when the client goes away", async () => {
    const account = newAccount("watch");
    await svc().grantCredits({ accountId: account, amount: 10n, type: CreditTransactionType.PURCHASE, idempotencyKey: key() });
    const abort = new AbortController();
    const stream = client(CreditService, TOKENS.service, "grpc-http2").watchBalance({ accountId: account }, { signal: abort.signal })[Symbol.asyncIterator]();
    expect((await next(stream)).balance?.balance).to.equal(10n);
    await svc().deductCredits({ accountId: account, operationType: "linking", usage: { credits: 4n }, idempotencyKey: key() });
    expect((await next(stream)).balance?.balance).to.equal(6n);
    await svc().reserveCredits({ accountId: account, operationType: "linking", credits: 5n, idempotencyKey: key() });
    expect((await next(stream)).balance).to.include({ balance: 6n, reserved: 5n, available: 1n });
    abort.abort();
    await stream.next().catch(() => undefined);
  });

  it("sees changes made through another server instance on the same database", async () => {
    const account = newAccount("watch");
    const sequelize = createSequelize({ url: harness().databaseUrl, applicationName: "billing-second", poolMax: 3 });
    const other = createApp(harness().config, sequelize, createLogger("silent"));
    const port = await other.listen(0, "127.0.0.1");
    try {
      const otherClient = createClient(CreditService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}` }));
      const abort = new AbortController();
      const stream = client(CreditService, TOKENS.accountA, "connect-json-http1").watchBalance({ accountId: "acct_a" }, { signal: abort.signal })[Symbol.asyncIterator]();
      const first = (await next(stream)).balance!.balance;
      await otherClient.grantCredits({ accountId: "acct_a", amount: 3n, type: CreditTransactionType.SUBSCRIPTION, idempotencyKey: key() }, { headers: { authorization: `Bearer ${TOKENS.service}` } });
      expect((await next(stream)).balance?.balance).to.equal(first + 3n);
      abort.abort();
      void account;
    } finally {
      await other.close(1_000);
      await sequelize.close();
    }
  });

  it("keeps accounts to their own balance", async () => {
    const stream = client(CreditService, TOKENS.accountA).watchBalance({ accountId: "acct_b" });
    await expectError((async () => { for await (const _ of stream) { /* drain */ } })(), Code.PermissionDenied);
  });
});
