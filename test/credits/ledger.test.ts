/**
 * GetBalance, GrantCredits, DeductCredits (explicit credits) and
 * ListTransactions through the API: happy paths, each error with nothing
 * written, idempotent retries, and keyset pagination.
 */
import { Code } from "@connectrpc/connect";
import * as grpc from "@grpc/grpc-js";
import { expect } from "chai";
import { CreditService, CreditTransactionType } from "../../gen/billing/v1/credit_service_pb.js";
import { ModelConfigService, ModelType, Provider } from "../../gen/billing/v1/model_config_service_pb.js";
import {
  PROTOCOLS,
  TOKENS,
  badFields,
  client,
  type Protocol,
  errorReason,
  expectError,
  grpcJsCall,
  grpcJsClient,
  grpcJsDetails,
  harness,
  key,
  newAccount,
} from "../harness.js";

const svc = () => client(CreditService, TOKENS.service);

/** Creates a text model in the catalogue unless it exists. */
export async function ensureModel(modelName: string, prices: { inputCostPer1m?: string; outputCostPer1m?: string; costPerImage?: string; validSizes?: string[] }) {
  const models = client(ModelConfigService, TOKENS.admin);
  const exists = await models.getModelConfig({ modelName }).then(() => true, () => false);
  if (exists) return;
  await models.createModelConfig({
    modelConfig: {
      modelName,
      displayName: modelName,
      modelType: prices.costPerImage ? ModelType.IMAGE : ModelType.TEXT,
      provider: Provider.OPENAI,
      isActive: true,
      ...prices,
    },
  });
}

async function grant(accountId: string, amount: bigint) {
  return svc().grantCredits({ accountId, amount, type: CreditTransactionType.PURCHASE, description: "test grant", idempotencyKey: key() });
}

/** Asserts the ledger invariant straight from the database. */
export async function assertLedgerConsistent(accountId: string): Promise<bigint> {
  const rows = (await harness().sequelize.query(
    `SELECT amount, balance_after FROM credit_transactions WHERE account_id = $1 ORDER BY id`,
    { bind: [accountId], type: "SELECT" as never },
  )) as unknown as { amount: string; balance_after: string }[];
  let running = 0n;
  for (const r of rows) {
    running += BigInt(r.amount);
    expect(BigInt(r.balance_after), "balance_after is the running sum").to.equal(running);
    expect(running >= 0n, "never below zero").to.equal(true);
  }
  const balance = (await svc().getBalance({ accountId })).balance!.balance;
  expect(balance, "balance = sum of amounts").to.equal(running);
  return balance;
}

async function ledgerRowCount(accountId: string): Promise<number> {
  const [row] = (await harness().sequelize.query(
    `SELECT (SELECT count(*) FROM credit_transactions WHERE account_id = $1) AS tx, (SELECT count(*) FROM credit_usage_logs WHERE account_id = $1) AS logs`,
    { bind: [accountId], type: "SELECT" as never },
  )) as unknown as { tx: string; logs: string }[];
  return Number(row!.tx) + Number(row!.logs);
}

describe("CreditService ledger", () => {
  before(async () => {
    await ensureModel("gpt-4o-mini", { inputCostPer1m: "0.1500", outputCostPer1m: "0.6000" });
  });

  describe("GetBalance", () => {
    it("is zero for an account never seen, and creates nothing", async () => {
      const account = newAccount();
      const res = await svc().getBalance({ accountId: account });
      expect(res.balance).to.include({ accountId: account, balance: 0n, reserved: 0n, available: 0n });
      expect(await ledgerRowCount(account)).to.equal(0);
    });

    it("rejects an empty or over-long account_id naming the field", async () => {
      let err = await expectError(svc().getBalance({ accountId: "" }), Code.InvalidArgument);
      expect(badFields(err)).to.deep.equal(["account_id"]);
      err = await expectError(svc().getBalance({ accountId: "a".repeat(256) }), Code.InvalidArgument);
      expect(badFields(err)).to.deep.equal(["account_id"]);
    });

    it("accepts an account_id of exactly 255 characters", async () => {
      const id = "b".repeat(255);
      await grant(id, 3n);
      expect((await svc().getBalance({ accountId: id })).balance?.balance).to.equal(3n);
    });
  });

  describe("GrantCredits", () => {
    for (const protocol of PROTOCOLS) {
      it(`adds credits and writes one ledger row (${protocol})`, async () => {
        const account = newAccount();
        const res = await client(CreditService, TOKENS.service, protocol).grantCredits({
          accountId: account,
          amount: 100n,
          type: CreditTransactionType.SUBSCRIPTION,
          description: "November renewal",
          metadata: { plan: "pro", seats: 3 },
          idempotencyKey: key(),
        });
        expect(res.transaction).to.include({ accountId: account, amount: 100n, balanceAfter: 100n, type: CreditTransactionType.SUBSCRIPTION, description: "November renewal" });
        expect(res.transaction?.metadata).to.deep.equal({ plan: "pro", seats: 3 });
        expect(res.transaction?.id).to.be.a("string").and.not.equal("");
        expect(res.balance).to.include({ balance: 100n, available: 100n, reserved: 0n });
        expect(await assertLedgerConsistent(account)).to.equal(100n);
      });
    }

    it("accepts each grant type and links a payment id", async () => {
      const account = newAccount();
      const paymentId = "7f1d7b3e-9a8c-4c1e-8d5a-2f0b6c3e1a90";
      for (const type of [CreditTransactionType.PURCHASE, CreditTransactionType.SUBSCRIPTION, CreditTransactionType.REFUND, CreditTransactionType.ADJUSTMENT]) {
        const res = await svc().grantCredits({ accountId: account, amount: 1n, type, paymentId, idempotencyKey: key() });
        expect(res.transaction?.type).to.equal(type);
        expect(res.transaction?.paymentId).to.equal(paymentId);
      }
      expect(await assertLedgerConsistent(account)).to.equal(4n);
    });

    it("rejects bad input naming every offending field, and writes nothing", async () => {
      const account = newAccount();
      const err = await expectError(
        svc().grantCredits({ accountId: account, amount: 0n, type: CreditTransactionType.DEDUCTION, description: "x".repeat(256), paymentId: "not-a-uuid", idempotencyKey: "" }),
        Code.InvalidArgument,
        "INVALID_ARGUMENT",
      );
      expect(badFields(err)).to.have.members(["amount", "type", "description", "payment_id", "idempotency_key"]);
      await expectError(svc().grantCredits({ accountId: account, amount: -5n, type: CreditTransactionType.PURCHASE, idempotencyKey: key() }), Code.InvalidArgument);
      await expectError(svc().grantCredits({ accountId: account, amount: 5n, type: CreditTransactionType.UNSPECIFIED, idempotencyKey: key() }), Code.InvalidArgument);
      await expectError(svc().grantCredits({ accountId: account, amount: 5n, type: 42 as CreditTransactionType, idempotencyKey: key() }), Code.InvalidArgument);
      expect(await ledgerRowCount(account)).to.equal(0);
      expect((await svc().getBalance({ accountId: account })).balance?.balance).to.equal(0n);
    });

    it("names the field for grpc-js callers too", async () => {
      const c = grpcJsClient("CreditService");
      try {
        const err = (await grpcJsCall(c, "GrantCredits", { accountId: newAccount(), amount: "0", type: "CREDIT_TRANSACTION_TYPE_PURCHASE", idempotencyKey: key() }, TOKENS.service).catch(
          (e: grpc.ServiceError) => e,
        )) as grpc.ServiceError;
        expect(err.code).to.equal(grpc.status.INVALID_ARGUMENT);
        expect(err.details).to.include("amount");
        expect(grpcJsDetails(err)).to.deep.equal({ reason: "INVALID_ARGUMENT", fields: ["amount"] });
      } finally {
        c.close();
      }
    });

    it("replays a retry with the same key: same response, one effect", async () => {
      const account = newAccount();
      const req = { accountId: account, amount: 40n, type: CreditTransactionType.PURCHASE, description: "pack", idempotencyKey: key() };
      const first = await svc().grantCredits(req);
      await grant(account, 1n); // another change in between
      const again = await client(CreditService, TOKENS.service, "grpc-http2").grantCredits(req);
      expect(again.transaction).to.deep.equal(first.transaction);
      expect(again.balance?.balance).to.equal(first.balance?.balance);
      expect(await assertLedgerConsistent(account)).to.equal(41n);
    });

    it("rejects the same key with a different request as ALREADY_EXISTS", async () => {
      const account = newAccount();
      const idempotencyKey = key();
      await svc().grantCredits({ accountId: account, amount: 40n, type: CreditTransactionType.PURCHASE, idempotencyKey });
      await expectError(
        svc().grantCredits({ accountId: account, amount: 41n, type: CreditTransactionType.PURCHASE, idempotencyKey }),
        Code.AlreadyExists,
        "IDEMPOTENCY_KEY_REUSED",
      );
      expect(await assertLedgerConsistent(account)).to.equal(40n);
    });
  });

  describe("DeductCredits", () => {
    it("charges explicit credits with a DEDUCTION and a usage log", async () => {
      const account = newAccount();
      await grant(account, 100n);
      const res = await svc().deductCredits({
        accountId: account,
        operationType: "content_generation",
        usage: { credits: 30n, tokensInput: 1200n, tokensOutput: 800n, model: "gpt-4o-mini" },
        relatedObjectType: "task",
        relatedObjectId: "9001",
        metadata: { request: "r-1" },
        idempotencyKey: key(),
      });
      expect(res.transaction).to.include({ type: CreditTransactionType.DEDUCTION, amount: -30n, balanceAfter: 70n });
      expect(res.usageLog).to.include({
        accountId: account,
        operationType: "content_generation",
        creditsUsed: 30n,
        modelUsed: "gpt-4o-mini",
        tokensInput: 1200n,
        tokensOutput: 800n,
        relatedObjectType: "task",
        relatedObjectId: "9001",
      });
      expect(res.usageLog?.metadata).to.deep.equal({ request: "r-1" });
      // cost_usd by the model's prices: (1200 x 0.15 + 800 x 0.60) / 1M = 0.00066 -> 0.0007
      expect(res.usageLog?.costUsd).to.equal("0.0007");
      expect(res.balance).to.include({ balance: 70n, available: 70n });
      expect(await assertLedgerConsistent(account)).to.equal(70n);
    });

    it("answers with exactly what the ledger, the usage log and the balance hold, reservations included", async () => {
      const account = newAccount();
      await grant(account, 100n);
      await svc().reserveCredits({ accountId: account, operationType: "clustering", credits: 15n, idempotencyKey: key() });
      const res = await svc().deductCredits({
        accountId: account,
        operationType: "content_generation",
        usage: { credits: 25n, tokensInput: 10n, model: "" },
        relatedObjectType: "task",
        relatedObjectId: "t-7",
        metadata: { nested: { a: [1, "two"] }, quote: "it's \"quoted\"" },
        idempotencyKey: key(),
      });
      const [tx] = (await svc().listTransactions({ accountId: account, pageSize: 1 })).transactions;
      const [log] = (await svc().listUsageLogs({ accountId: account, pageSize: 1 })).usageLogs;
      expect(res.transaction).to.deep.equal(tx);
      expect(res.usageLog).to.deep.equal(log);
      expect(res.balance).to.include({ balance: 75n, reserved: 15n, available: 60n });
      const balance = (await svc().getBalance({ accountId: account })).balance!;
      expect(res.balance?.updatedAt).to.deep.equal(balance.updatedAt);
    });

    it("stores legacy operation names as their modern names", async () => {
      const account = newAccount();
      await grant(account, 10n);
      for (const [legacy, modern] of [["ideas", "idea_generation"], ["content", "content_generation"], ["images", "image_generation"]]) {
        const res = await svc().deductCredits({ accountId: account, operationType: legacy!, usage: { credits: 1n }, idempotencyKey: key() });
        expect(res.usageLog?.operationType).to.equal(modern);
      }
    });

    it("fails with INSUFFICIENT_CREDITS and writes nothing", async () => {
      const account = newAccount();
      await grant(account, 10n);
      const before = await ledgerRowCount(account);
      const err = await expectError(
        svc().deductCredits({ accountId: account, operationType: "clustering", usage: { credits: 11n }, idempotencyKey: key() }),
        Code.FailedPrecondition,
        "INSUFFICIENT_CREDITS",
      );
      expect(err.rawMessage).to.include("11 required, 10 available");
      expect(await ledgerRowCount(account)).to.equal(before);
      expect(await assertLedgerConsistent(account)).to.equal(10n);
    });

    it("fails with INSUFFICIENT_CREDITS for an account never credited", async () => {
      const account = newAccount();
      await expectError(svc().deductCredits({ accountId: account, operationType: "clustering", usage: { credits: 1n }, idempotencyKey: key() }), Code.FailedPrecondition, "INSUFFICIENT_CREDITS");
      expect(await ledgerRowCount(account)).to.equal(0);
    });

    it("takes the balance to exactly zero but not below", async () => {
      const account = newAccount();
      await grant(account, 5n);
      await svc().deductCredits({ accountId: account, operationType: "linking", usage: { credits: 5n }, idempotencyKey: key() });
      await expectError(svc().deductCredits({ accountId: account, operationType: "linking", usage: { credits: 1n }, idempotencyKey: key() }), Code.FailedPrecondition);
      expect(await assertLedgerConsistent(account)).to.equal(0n);
    });

    it("rejects bad input naming the fields, and writes nothing", async () => {
      const account = newAccount();
      await grant(account, 10n);
      const before = await ledgerRowCount(account);
      let err = await expectError(
        svc().deductCredits({ accountId: account, operationType: "teleportation", usage: { credits: -1n, tokensInput: -5n }, relatedObjectId: "r".repeat(300), idempotencyKey: "" }),
        Code.InvalidArgument,
      );
      expect(badFields(err)).to.include.members(["operation_type", "usage.credits", "usage.tokens_input", "related_object_id", "idempotency_key"]);
      err = await expectError(svc().deductCredits({ accountId: account, operationType: "clustering", idempotencyKey: key() }), Code.InvalidArgument);
      expect(badFields(err)).to.deep.equal(["usage"]);
      expect(await ledgerRowCount(account)).to.equal(before);
    });


    it("replays a retried deduction without charging twice", async () => {
      const account = newAccount();
      await grant(account, 50n);
      const req = { accountId: account, operationType: "reparse", usage: { credits: 20n }, idempotencyKey: key() };
      const first = await svc().deductCredits(req);
      const again = await svc().deductCredits(req);
      expect(again.transaction?.id).to.equal(first.transaction?.id);
      expect(again.usageLog?.id).to.equal(first.usageLog?.id);
      expect(again.balance?.balance).to.equal(30n);
      expect(await assertLedgerConsistent(account)).to.equal(30n);
    });

    it("does not store a failed request under its key: a retry after a top-up succeeds", async () => {
      const account = newAccount();
      const req = { accountId: account, operationType: "reparse", usage: { credits: 20n }, idempotencyKey: key() };
      await expectError(svc().deductCredits(req), Code.FailedPrecondition, "INSUFFICIENT_CREDITS");
      await grant(account, 20n);
      const res = await svc().deductCredits(req);
      expect(res.balance?.balance).to.equal(0n);
    });

    it("keeps metadata that looks like the stored encoding ($n, $d, $-keys) intact, in the answer and in a replay", async () => {
      const account = newAccount("dollar");
      await grant(account, 100n);
      const metadata = { n: { $n: "5" }, d: { $d: "2020-01-01T00:00:00.000Z" }, $x: 1, $$y: [{ $n: "7" }], __proto__x: "ok" };
      for (const protocol of ["connect-json-http1", "grpc-http2"] as const) {
        const req = { accountId: account, operationType: "reparse", usage: { credits: 1n }, metadata, idempotencyKey: key() };
        const first = await client(CreditService, TOKENS.service, protocol).deductCredits(req);
        const replay = await client(CreditService, TOKENS.service, protocol).deductCredits(req);
        expect(first.transaction?.metadata, protocol).to.deep.equal(metadata);
        expect(first.usageLog?.metadata, protocol).to.deep.equal(metadata);
        expect(replay).to.deep.equal(first);
      }
      const granted = { accountId: account, amount: 3n, type: CreditTransactionType.PURCHASE, metadata, idempotencyKey: key() };
      const g1 = await svc().grantCredits(granted);
      expect(g1.transaction?.metadata).to.deep.equal(metadata);
      expect(await svc().grantCredits(granted)).to.deep.equal(g1);
      expect(await assertLedgerConsistent(account)).to.equal(101n);
    });

    it("drops a deduction whose deadline passes while it waits for its account: never applied, over gRPC and Connect", async () => {
      const account = newAccount("late");
      await grant(account, 100n);
      const { sequelize } = harness();
      const lock = await sequelize.transaction();
      const charge = (protocol: Protocol, credits: bigint, timeoutMs?: number) =>
        client(CreditService, TOKENS.service, protocol).deductCredits({ accountId: account, operationType: "reparse", usage: { credits }, idempotencyKey: key() }, { timeoutMs });
      let first: Promise<unknown>;
      try {
        await sequelize.query("SELECT 1 FROM billing_accounts WHERE account_id = $1 FOR UPDATE", { bind: [account], transaction: lock });
        first = charge("grpc-http2", 1n); // its batch waits on the row lock; the account is busy
        await new Promise((r) => setTimeout(r, 50));
        const late = [charge("grpc-http2", 10n, 200), charge("connect-json-http1", 20n, 200)];
        for (const call of late) await expectError(call, Code.DeadlineExceeded);
        await new Promise((r) => setTimeout(r, 100));
      } finally {
        await lock.rollback();
      }
      await first;
      await new Promise((r) => setTimeout(r, 100)); // the queued ones are judged when the first batch ends
      expect(await assertLedgerConsistent(account)).to.equal(99n);
      expect(await ledgerRowCount(account)).to.equal(3); // the grant, the first deduction and its usage log
    });
  });

  describe("ListTransactions", () => {
    it("pages newest first with opaque tokens until an empty token", async () => {
      const account = newAccount();
      for (let i = 1n; i <= 5n; i++) await grant(account, i);
      const seen: bigint[] = [];
      let pageToken = "";
      let pages = 0;
      do {
        const res = await svc().listTransactions({ accountId: account, pageSize: 2, pageToken });
        expect(res.transactions.length).to.be.at.most(2);
        seen.push(...res.transactions.map((t) => t.amount));
        pageToken = res.nextPageToken;
        pages++;
      } while (pageToken !== "");
      expect(seen).to.deep.equal([5n, 4n, 3n, 2n, 1n]);
      expect(pages).to.equal(3);
    });

    it("is stable when rows are inserted between pages", async () => {
      const account = newAccount();
      for (let i = 1n; i <= 4n; i++) await grant(account, i);
      const first = await svc().listTransactions({ accountId: account, pageSize: 2 });
      await grant(account, 99n);
      const second = await svc().listTransactions({ accountId: account, pageSize: 2, pageToken: first.nextPageToken });
      expect(second.transactions.map((t) => t.amount)).to.deep.equal([2n, 1n]);
    });

    it("filters by type and time range", async () => {
      const account = newAccount();
      await grant(account, 10n);
      await svc().deductCredits({ accountId: account, operationType: "clustering", usage: { credits: 3n }, idempotencyKey: key() });
      const deductions = await svc().listTransactions({ accountId: account, types: [CreditTransactionType.DEDUCTION] });
      expect(deductions.transactions.map((t) => t.amount)).to.deep.equal([-3n]);
      const future = { seconds: BigInt(Math.floor(Date.now() / 1000) + 3600), nanos: 0 };
      const none = await svc().listTransactions({ accountId: account, startTime: future });
      expect(none.transactions).to.deep.equal([]);
      expect(none.nextPageToken).to.equal("");
    });

    it("uses 50 by default and clamps page_size to 500", async () => {
      const account = newAccount();
      const res = await svc().listTransactions({ accountId: account, pageSize: 100000 });
      expect(res.transactions).to.deep.equal([]);
    });

    it("rejects a negative page_size, a forged token, a token of other filters, and UNSPECIFIED types", async () => {
      const account = newAccount();
      for (let i = 1n; i <= 3n; i++) await grant(account, i);
      let err = await expectError(svc().listTransactions({ accountId: account, pageSize: -1 }), Code.InvalidArgument);
      expect(badFields(err)).to.deep.equal(["page_size"]);
      err = await expectError(svc().listTransactions({ accountId: account, pageToken: "garbage" }), Code.InvalidArgument);
      expect(badFields(err)).to.deep.equal(["page_token"]);
      const page = await svc().listTransactions({ accountId: account, pageSize: 1 });
      err = await expectError(svc().listTransactions({ accountId: newAccount(), pageSize: 1, pageToken: page.nextPageToken }), Code.InvalidArgument);
      expect(badFields(err)).to.deep.equal(["page_token"]);
      err = await expectError(svc().listTransactions({ accountId: account, types: [CreditTransactionType.UNSPECIFIED] }), Code.InvalidArgument);
      expect(badFields(err)).to.deep.equal(["types[0]"]);
      expect(errorReason(err)).to.equal("INVALID_ARGUMENT");
    });

    it("lets an account read its own ledger", async () => {
      const res = await client(CreditService, TOKENS.accountA).listTransactions({ accountId: "acct_a" });
      expect(res.transactions).to.be.an("array");
    });
  });
});

describe("idempotency key retention", () => {
  it("purges keys older than 24 hours and keeps younger ones", async () => {
    const { purgeIdempotencyKeys } = await import("../../src/domain/idempotency.js");
    const account = newAccount("purge");
    const old = key();
    const young = key();
    await svc().grantCredits({ accountId: account, amount: 1n, type: CreditTransactionType.PURCHASE, idempotencyKey: old });
    await svc().grantCredits({ accountId: account, amount: 1n, type: CreditTransactionType.PURCHASE, idempotencyKey: young });
    await harness().sequelize.query(`UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE account_id = $1 AND key = $2`, { bind: [account, old] });
    await harness().sequelize.query(`UPDATE idempotency_keys SET created_at = now() - interval '23 hours' WHERE account_id = $1 AND key = $2`, { bind: [account, young] });
    expect(await purgeIdempotencyKeys(harness().sequelize)).to.be.at.least(1);
    const rows = (await harness().sequelize.query(`SELECT key FROM idempotency_keys WHERE account_id = $1`, { bind: [account], type: "SELECT" as never })) as unknown as { key: string }[];
    expect(rows.map((r) => r.key)).to.deep.equal([young]);
  });
});
