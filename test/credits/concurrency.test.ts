/**
 * Ledger invariants under racing callers: exactly the affordable deductions
 * succeed, racing retries of one key have one effect, and afterwards the
 * balance equals the sum of the ledger with every balance_after a running sum.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { expect } from "chai";
import { CreditService, CreditTransactionType } from "../../gen/billing/v1/credit_service_pb.js";
import { TOKENS, client, errorReason, harness, key, newAccount } from "../harness.js";
import { assertLedgerConsistent } from "./ledger.test.js";

describe("CreditService under concurrency", function () {
  this.timeout(60_000);

  it("100 racing deductions of 10 against 250 credits: exactly 25 succeed, over two protocols", async () => {
    const account = newAccount("race");
    const svcJson = client(CreditService, TOKENS.service, "connect-json-http1");
    const svcGrpc = client(CreditService, TOKENS.service, "grpc-http2");
    await svcJson.grantCredits({ accountId: account, amount: 250n, type: CreditTransactionType.PURCHASE, idempotencyKey: key() });
    const results = await Promise.allSettled(
      Array.from({ length: 100 }, (_, i) =>
        (i % 2 ? svcJson : svcGrpc).deductCredits({ accountId: account, operationType: "clustering", usage: { credits: 10n }, idempotencyKey: key() }),
      ),
    );
    const ok = results.filter((r) => r.status === "fulfilled");
    const failed = results.filter((r): r is PromiseRejectedResult => r.status === "rejected");
    expect(ok.length).to.equal(25);
    for (const f of failed) {
      expect(f.reason).to.be.instanceOf(ConnectError);
      expect((f.reason as ConnectError).code).to.equal(Code.FailedPrecondition);
      expect(errorReason(f.reason as ConnectError)).to.equal("INSUFFICIENT_CREDITS");
    }
    expect(await assertLedgerConsistent(account)).to.equal(0n);
  });

  it("racing retries of one idempotency key charge once and all get the same answer", async () => {
    const account = newAccount("retry");
    const svc = client(CreditService, TOKENS.service);
    await svc.grantCredits({ accountId: account, amount: 100n, type: CreditTransactionType.PURCHASE, idempotencyKey: key() });
    const req = { accountId: account, operationType: "optimization", usage: { credits: 7n }, idempotencyKey: key() };
    const results = await Promise.all(Array.from({ length: 20 }, () => svc.deductCredits(req)));
    const ids = new Set(results.map((r) => r.transaction?.id));
    expect(ids.size).to.equal(1);
    expect(results.every((r) => r.balance?.balance === 93n)).to.equal(true);
    expect(await assertLedgerConsistent(account)).to.equal(93n);
  });

  // billing_debit reads stored keys under the account lock and stores its
  // own at the end; a transaction that stores the same key without that lock
  // (another method's claim) in between is the race these two pin down.
  for (const other of ["commits", "rolls back"] as const) {
    it(`a deduction whose key another transaction stores meanwhile (it ${other}) writes nothing twice`, async () => {
      const account = newAccount("keyrace");
      const svc = client(CreditService, TOKENS.service, "grpc-http2");
      await svc.grantCredits({ accountId: account, amount: 100n, type: CreditTransactionType.PURCHASE, idempotencyKey: key() });
      const k = key();
      const db = harness().sequelize;
      const t = await db.transaction();
      let settled = false;
      try {
        await db.query(`INSERT INTO idempotency_keys (account_id, key, method, request_hash, response) VALUES ($1, $2, 'AdjustCredits', repeat('0', 64), '{"held": true}')`, { bind: [account, k], transaction: t });
        const deduction = svc.deductCredits({ accountId: account, operationType: "optimization", usage: { credits: 7n }, idempotencyKey: k }).finally(() => (settled = true));
        await new Promise((r) => setTimeout(r, 300));
        expect(settled, "the deduction waits for the key's owner").to.equal(false);
        if (other === "commits") {
          await t.commit();
          const err = await deduction.then(() => undefined, (e: unknown) => e);
          expect(err).to.be.instanceOf(ConnectError);
          expect((err as ConnectError).code).to.equal(Code.AlreadyExists);
          expect(await assertLedgerConsistent(account)).to.equal(100n);
        } else {
          await t.rollback();
          const r = await deduction;
          expect(r.balance?.balance).to.equal(93n);
          const again = await svc.deductCredits({ accountId: account, operationType: "optimization", usage: { credits: 7n }, idempotencyKey: k });
          expect(again.transaction?.id).to.equal(r.transaction?.id);
          expect(await assertLedgerConsistent(account)).to.equal(93n);
        }
      } finally {
        if (!settled) await t.rollback().catch(() => undefined);
      }
    });
  }

  it("racing grants and deductions across many accounts keep every ledger consistent", async () => {
    const accounts = Array.from({ length: 10 }, () => newAccount("mix"));
    const svc = client(CreditService, TOKENS.service, "grpc-http2");
    await Promise.all(accounts.map((a) => svc.grantCredits({ accountId: a, amount: 50n, type: CreditTransactionType.PURCHASE, idempotencyKey: key() })));
    const calls = [];
    for (let i = 0; i < 200; i++) {
      const a = accounts[i % accounts.length]!;
      calls.push(
        i % 3 === 0
          ? svc.grantCredits({ accountId: a, amount: 5n, type: CreditTransactionType.ADJUSTMENT, idempotencyKey: key() })
          : svc.deductCredits({ accountId: a, operationType: "linking", usage: { credits: 4n }, idempotencyKey: key() }),
      );
    }
    await Promise.allSettled(calls);
    for (const a of accounts) await assertLedgerConsistent(a);
    const [row] = (await harness().sequelize.query(`SELECT count(*)::int AS n FROM billing_accounts WHERE balance < 0`, { type: "SELECT" as never })) as unknown as { n: number }[];
    expect(row!.n).to.equal(0);
  });
});

describe("CreditService with two server instances on one database", function () {
  this.timeout(60_000);

  /** Runs `fn` with a second app on the harness database, closed afterwards. */
  async function withSecondInstance(fn: (port: number) => Promise<void>): Promise<void> {
    const { createApp } = await import("../../src/app.js");
    const { createSequelize } = await import("../../src/db/database.js");
    const { createLogger } = await import("../../src/logger.js");
    const sequelize = createSequelize({ url: harness().databaseUrl, applicationName: "billing-second-instance", poolMax: 10 });
    const other = createApp(harness().config, sequelize, createLogger("silent"));
    const port = await other.listen(0, "127.0.0.1");
    try {
      await fn(port);
    } finally {
      await other.close(1_000);
      await sequelize.close();
    }
  }

  it("coalesced deductions through both stay exact: affordable ones succeed, ledgers consistent", async () => {
    const { createClient } = await import("@connectrpc/connect");
    const { createGrpcTransport } = await import("@connectrpc/connect-node");
    await withSecondInstance(async (port) => {
      const first = client(CreditService, TOKENS.service, "grpc-http2");
      const second = createClient(CreditService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}` }));
      const headers = { authorization: `Bearer ${TOKENS.service}` };
      const hot = newAccount("two");
      const spread = Array.from({ length: 5 }, () => newAccount("two"));
      for (const a of [hot, ...spread]) await first.grantCredits({ accountId: a, amount: 100n, type: CreditTransactionType.PURCHASE, idempotencyKey: key() });
      const calls: Promise<unknown>[] = [];
      // Every account is asked for more than it has: 200 x 3 on the hot one, 40 x 3 on each other.
      for (let i = 0; i < 400; i++) {
        const accountId = i % 2 ? hot : spread[Math.floor(i / 2) % 5]!;
        const req = { accountId, operationType: "clustering", usage: { credits: 3n }, idempotencyKey: key() };
        calls.push(i % 3 ? first.deductCredits(req) : second.deductCredits(req, { headers }));
      }
      // Retries of one key through both instances at once: one effect.
      const retry = { accountId: hot, operationType: "linking", usage: { credits: 1n }, idempotencyKey: key() };
      const retries = Array.from({ length: 6 }, (_, i) => (i % 2 ? first.deductCredits(retry) : second.deductCredits(retry, { headers })));
      const results = await Promise.allSettled([...calls, ...retries]);
      const retryResults = results.slice(400);
      const retryIds = new Set(retryResults.filter((r) => r.status === "fulfilled").map((r) => (r as PromiseFulfilledResult<{ transaction?: { id: string } }>).value.transaction?.id));
      expect(retryIds.size).to.be.at.most(1);
      for (const r of results.slice(0, 400)) {
        if (r.status === "rejected") expect(errorReason(r.reason as ConnectError)).to.equal("INSUFFICIENT_CREDITS");
      }
      // Demand exceeded every balance, so every affordable charge went through: less than 3 credits are left.
      for (const a of [hot, ...spread]) {
        const balance = await assertLedgerConsistent(a);
        expect(balance < 3n, `${a} kept ${balance}`).to.equal(true);
      }
    });
  });

  it("a pricing change through one instance prices deductions on the other within CONFIG_CACHE_MS", async () => {
    const { createClient } = await import("@connectrpc/connect");
    const { createGrpcTransport } = await import("@connectrpc/connect-node");
    const { CONFIG_CACHE_MS } = await import("../../src/domain/credits/pricing.js");
    await withSecondInstance(async (port) => {
      const admin = client(CreditService, TOKENS.admin);
      const elsewhere = createClient(CreditService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}` }));
      const first = client(CreditService, TOKENS.service, "grpc-http2");
      const account = newAccount("cfg");
      await admin.grantCredits({ accountId: account, amount: 10_000n, type: CreditTransactionType.PURCHASE, idempotencyKey: key() });
      const op = "site_structure_generation";
      const before = (await admin.getCostConfig({ operationType: op })).costConfig!;
      const charge = async () => (await first.deductCredits({ accountId: account, operationType: op, usage: { tokensInput: 1n }, idempotencyKey: key() })).transaction!.amount;
      try {
        expect(await charge()).to.equal(-before.minCredits); // this instance has the old config cached
        const minCredits = before.minCredits + 6n;
        await elsewhere.updateCostConfig(
          { costConfig: { operationType: op, minCredits }, updateMask: { paths: ["min_credits"] } },
          { headers: { authorization: `Bearer ${TOKENS.admin}` } },
        );
        const changed = performance.now();
        let firstNew: number | undefined;
        while (performance.now() - changed < CONFIG_CACHE_MS + 500) {
          const amount = await charge();
          if (amount === -minCredits) firstNew ??= performance.now() - changed;
          else expect(firstNew, "an old price after the new one was seen").to.equal(undefined);
          await new Promise((r) => setTimeout(r, 20));
        }
        expect(firstNew, "the new price was never charged").to.not.equal(undefined);
        expect(firstNew!).to.be.at.most(CONFIG_CACHE_MS + 100);
      } finally {
        await admin.updateCostConfig({ costConfig: { operationType: op, minCredits: before.minCredits }, updateMask: { paths: ["min_credits"] } });
      }
    });
  });
});
