/**
 * Price versions through the API (issue 17): scheduled versions take effect
 * at their instant (on every replica), reads at an instant, the reservation
 * price lock, backdating (admin, visible in history), cancelling, the
 * coalesced deduction path pricing at arrival, and repricing usage.
 */
import { timestampFromDate, timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { expect } from "chai";
import { CreditRoundingMode, CreditService, CreditTransactionType, UsageGroupBy } from "../../gen/billing/v1/credit_service_pb.js";
import { ModelConfigService, ModelType, PriceVersionState, Provider } from "../../gen/billing/v1/model_config_service_pb.js";
import { TOKENS, badFields, client, expectError, harness, key, newAccount } from "../harness.js";

const svc = () => client(CreditService, TOKENS.service);
const admin = () => client(CreditService, TOKENS.opsAdmin, "grpc-http2");
const models = () => client(ModelConfigService, TOKENS.opsAdmin);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const until = async (t: Date) => {
  const ms = t.getTime() - Date.now();
  if (ms > 0) await sleep(ms);
};
const at = (d: Date) => timestampFromDate(d);

/** A fresh operation type: 100 tokens per credit, min 1, $0.0100 per credit. */
async function newOperation(): Promise<string> {
  const op = `pv_${Math.random().toString(36).slice(2, 10)}`;
  await admin().createCostConfig({ costConfig: { operationType: op, displayName: op, tokensPerCredit: 100n, minCredits: 1n, pricePerCreditUsd: "0.0100" } });
  return op;
}

/** A fresh text model at $1.0000 / $2.0000 per 1M tokens. */
async function newTextModel(): Promise<string> {
  const name = `pv-text-${Math.random().toString(36).slice(2, 10)}`;
  await models().createModelConfig({
    modelConfig: { modelName: name, displayName: name, modelType: ModelType.TEXT, provider: Provider.OPENAI, isActive: true, inputCostPer1m: "1.0000", outputCostPer1m: "2.0000" },
  });
  return name;
}

async function funded(amount: bigint): Promise<string> {
  const account = newAccount("pv");
  await svc().grantCredits({ accountId: account, amount, type: CreditTransactionType.PURCHASE, idempotencyKey: key() });
  return account;
}

describe("price versions", function () {
  this.timeout(60_000);

  it("a scheduled cost config version takes effect at its instant; reads at an instant show it ahead", async () => {
    const op = await newOperation();
    const usage = { tokensInput: 1000n };
    const before = await svc().estimateCredits({ operationType: op, usage });
    expect(before.credits).to.equal(10n);
    const effective = new Date(Date.now() + 2_000);
    const { version } = await admin().scheduleCostConfigVersion({ operationType: op, tokensPerCredit: 50n, minCredits: 1n, pricePerCreditUsd: "0.0100", effectiveFrom: at(effective) });
    expect(version).to.include({ operationType: op, tokensPerCredit: 50n, state: PriceVersionState.SCHEDULED, backdated: false, createdBy: "ops-ana" });
    expect(timestampDate(version!.effectiveFrom!).getTime()).to.equal(effective.getTime());
    // Still the old price now; the new one when asked at its instant.
    const now = await svc().estimateCredits({ operationType: op, usage });
    expect(now).to.include({ credits: 10n, costConfigVersionId: before.costConfigVersionId });
    expect((await svc().estimateCredits({ operationType: op, usage, at: at(effective) })).credits).to.equal(20n);
    expect((await svc().estimateCredits({ operationType: op, usage, at: at(new Date(effective.getTime() - 1)) })).credits).to.equal(10n);
    const ahead = (await svc().getCostConfig({ operationType: op, at: at(effective) })).costConfig!;
    expect(ahead).to.include({ tokensPerCredit: 50n, versionId: version!.id, previousTokensPerCredit: 100n });
    expect((await svc().getCostConfig({ operationType: op })).costConfig).to.include({ tokensPerCredit: 100n, versionId: before.costConfigVersionId });

    await until(effective);
    await sleep(20);
    const after = await svc().estimateCredits({ operationType: op, usage });
    expect(after).to.include({ credits: 20n, costConfigVersionId: version!.id });
    const account = await funded(100n);
    const charged = await svc().deductCredits({ accountId: account, operationType: op, usage, idempotencyKey: key() });
    expect(charged.transaction?.amount).to.equal(-20n);
    expect(charged.usageLog?.costConfigVersionId).to.equal(version!.id);
    const listed = (await svc().listCostConfigVersions({ operationType: op })).versions;
    expect(listed.map((v) => [v.id, v.state])).to.deep.equal([
      [version!.id, PriceVersionState.IN_FORCE],
      [before.costConfigVersionId, PriceVersionState.SUPERSEDED],
    ]);
    expect(timestampDate(listed[1]!.effectiveUntil!).getTime()).to.equal(effective.getTime());
  });

  it("a scheduled model price takes effect at its instant, for CalculateCost, GetModelConfig and charges", async () => {
    const model = await newTextModel();
    const first = (await models().getModelConfig({ modelName: model })).modelConfig!;
    expect(first.priceVersionId).to.not.equal("");
    const effective = new Date(Date.now() + 1_500);
    const { version } = await models().scheduleModelPriceVersion({ modelName: model, inputCostPer1m: "3.0000", outputCostPer1m: "4.0000", effectiveFrom: at(effective) });
    expect(version).to.include({ modelName: model, inputCostPer1m: "3.0000", outputCostPer1m: "4.0000", costPerImage: "", state: PriceVersionState.SCHEDULED });
    const cost = (when?: Date) => models().calculateCost({ modelName: model, tokensInput: 1_000_000n, tokensOutput: 1_000_000n, at: when && at(when) });
    expect(await cost()).to.include({ costUsd: "3.0000", priceVersionId: first.priceVersionId });
    expect(await cost(effective)).to.include({ costUsd: "7.0000", priceVersionId: version!.id });
    expect((await models().getModelConfig({ modelName: model, at: at(effective) })).modelConfig).to.include({ inputCostPer1m: "3.0000", priceVersionId: version!.id });
    expect((await models().getModelConfig({ modelName: model })).modelConfig).to.include({ inputCostPer1m: "1.0000" });
    // Before the model existed it had no prices.
    const early = await models().getModelConfig({ modelName: model, at: at(new Date(Date.now() - 86_400_000)) });
    expect(early.modelConfig).to.include({ inputCostPer1m: "", priceVersionId: "" });
    await expectError(cost(new Date(Date.now() - 86_400_000)), Code.FailedPrecondition, "PRICE_MISSING");
    await until(effective);
    expect(await cost()).to.include({ costUsd: "7.0000", priceVersionId: version!.id });
    const op = await newOperation();
    const account = await funded(1000n);
    const charged = await svc().deductCredits({ accountId: account, operationType: op, usage: { tokensInput: 100n, model }, idempotencyKey: key() });
    expect(charged.usageLog).to.include({ costUsd: "0.0003", modelPriceVersionId: version!.id });
    const logs = (await svc().listUsageLogs({ accountId: account })).usageLogs;
    expect(logs[0]).to.include({ modelPriceVersionId: version!.id, costConfigVersionId: charged.usageLog!.costConfigVersionId });
  });

  it("switches at exactly the instant on two instances sharing the database", async () => {
    const { createApp } = await import("../../src/app.js");
    const { createSequelize } = await import("../../src/db/database.js");
    const { createLogger } = await import("../../src/logger.js");
    const { CONFIG_CACHE_MS } = await import("../../src/domain/credits/pricing.js");
    const sequelize = createSequelize({ url: harness().databaseUrl, applicationName: "billing-price-versions", poolMax: 5 });
    const other = createApp(harness().config, sequelize, createLogger("silent"));
    const port = await other.listen(0, "127.0.0.1");
    try {
      const headers = { authorization: `Bearer ${TOKENS.service}` };
      const second = createClient(CreditService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}` }));
      const first = svc();
      const op = await newOperation();
      const usage = { tokensInput: 1000n };
      // Both instances price the operation (their caches hold its versions).
      await until(new Date(Date.now() + CONFIG_CACHE_MS));
      expect((await second.estimateCredits({ operationType: op, usage }, { headers })).credits).to.equal(10n);
      expect((await first.estimateCredits({ operationType: op, usage })).credits).to.equal(10n);
      // Scheduled through the second instance, further ahead than the cache age.
      const effective = new Date(Date.now() + CONFIG_CACHE_MS + 1_500);
      await createClient(CreditService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}` })).scheduleCostConfigVersion(
        { operationType: op, tokensPerCredit: 25n, minCredits: 1n, pricePerCreditUsd: "0.0100", effectiveFrom: at(effective) },
        { headers: { authorization: `Bearer ${TOKENS.admin}` } },
      );
      await until(new Date(effective.getTime() - 400));
      const seen: { instance: number; sent: number; answered: number; credits: bigint }[] = [];
      while (Date.now() < effective.getTime() + 400) {
        for (const [instance, call] of [
          [1, () => first.estimateCredits({ operationType: op, usage })],
          [2, () => second.estimateCredits({ operationType: op, usage }, { headers })],
        ] as const) {
          const sent = Date.now();
          const r = await call();
          seen.push({ instance, sent, answered: Date.now(), credits: r.credits });
        }
        await sleep(5);
      }
      const t = effective.getTime();
      for (const s of seen) {
        if (s.answered < t) expect(s.credits, `instance ${s.instance} answered before the instant`).to.equal(10n);
        if (s.sent >= t) expect(s.credits, `instance ${s.instance} asked after the instant`).to.equal(40n);
      }
      for (const instance of [1, 2]) {
        expect(seen.some((s) => s.instance === instance && s.answered < t && s.credits === 10n), `instance ${instance} old price seen`).to.equal(true);
        expect(seen.some((s) => s.instance === instance && s.sent >= t && s.credits === 40n), `instance ${instance} new price seen`).to.equal(true);
      }
    } finally {
      await other.close(1_000);
      await sequelize.close();
    }
  });

  it("a reservation taken before a price rise commits at the old prices; price_at_commit uses the new ones", async () => {
    const op = await newOperation();
    const model = await newTextModel();
    const account = await funded(1000n);
    const usage = { tokensInput: 1000n, tokensOutput: 1000n, model }; // 20 credits at 100 tokens per credit; $0.0030
    const locked = (await svc().reserveCredits({ accountId: account, operationType: op, credits: 50n, idempotencyKey: key() })).reservation!;
    const unlocked = (await svc().reserveCredits({ accountId: account, operationType: op, credits: 50n, idempotencyKey: key() })).reservation!;
    const oldVersion = (await svc().getCostConfig({ operationType: op })).costConfig!.versionId;
    expect(locked.costConfigVersionId).to.equal(oldVersion);
    expect(locked.pricedAt).to.not.equal(undefined);
    const effective = new Date(Date.now() + 1_000);
    const rise = (await admin().scheduleCostConfigVersion({ operationType: op, tokensPerCredit: 10n, minCredits: 1n, pricePerCreditUsd: "0.0100", effectiveFrom: at(effective) })).version!;
    const modelRise = (await models().scheduleModelPriceVersion({ modelName: model, inputCostPer1m: "10.0000", outputCostPer1m: "20.0000", effectiveFrom: at(effective) })).version!;
    await until(effective);
    await sleep(20);
    // A price correction backdated to before the reservation does not reach it either.
    await models().scheduleModelPriceVersion({ modelName: model, inputCostPer1m: "5.0000", outputCostPer1m: "5.0000", effectiveFrom: at(new Date(Date.now() - 60_000)), backdate: true });
    expect((await svc().estimateCredits({ operationType: op, usage })).credits).to.equal(200n);
    const committed = await svc().commitReservation({ reservationId: locked.id, usage, idempotencyKey: key() });
    expect(committed.transaction?.amount).to.equal(-20n);
    expect(committed.usageLog).to.include({ creditsUsed: 20n, costUsd: "0.0030", costConfigVersionId: oldVersion });
    expect(committed.usageLog?.modelPriceVersionId).to.not.equal(modelRise.id);
    const atCommit = await svc().commitReservation({ reservationId: unlocked.id, usage, idempotencyKey: key(), priceAtCommit: true });
    expect(atCommit.transaction?.amount).to.equal(-200n);
    expect(atCommit.usageLog).to.include({ costUsd: "0.0300", costConfigVersionId: rise.id, modelPriceVersionId: modelRise.id });
    expect((await svc().getBalance({ accountId: account })).balance).to.include({ balance: 780n, reserved: 0n });
  });

  it("backdating needs an admin and the backdate flag, and is visible in history", async () => {
    const op = await newOperation();
    const past = new Date(Date.now() - 3_600_000);
    const request = { operationType: op, tokensPerCredit: 70n, minCredits: 2n, pricePerCreditUsd: "0.0200", effectiveFrom: at(past) };
    await expectError(svc().scheduleCostConfigVersion({ ...request, backdate: true }), Code.PermissionDenied, "PERMISSION_DENIED");
    const err = await expectError(admin().scheduleCostConfigVersion({ ...request, pricePerCreditUsd: "0.00001" }), Code.InvalidArgument, "INVALID_ARGUMENT");
    expect(badFields(err)).to.have.members(["effective_from", "price_per_credit_usd"]);
    expect((await svc().listCostConfigVersions({ operationType: op })).versions).to.have.length(1);
    const { version } = await admin().scheduleCostConfigVersion({ ...request, backdate: true });
    expect(version).to.include({ backdated: true, state: PriceVersionState.SUPERSEDED, tokensPerCredit: 70n, createdBy: "ops-ana" });
    const history = (await client(CreditService, TOKENS.accountA).listCostConfigHistory({ operationType: op })).entries;
    expect(history[0]).to.include({ action: "backdate_version", actor: "ops-ana" });
    expect(history[0]!.after).to.include({ version_id: version!.id, backdated: true, tokens_per_credit: 70, effective_from: past.toISOString() });
    expect(history[0]!.before).to.equal(undefined); // nothing was in force then
    // Same rule for model prices.
    const model = await newTextModel();
    const created = timestampDate((await models().getModelConfig({ modelName: model })).modelConfig!.priceEffectiveFrom!);
    await sleep(50);
    const modelRequest = { modelName: model, inputCostPer1m: "0.5000", outputCostPer1m: "0.5000", effectiveFrom: at(new Date(created.getTime() + 10)) };
    expect(badFields(await expectError(models().scheduleModelPriceVersion(modelRequest), Code.InvalidArgument))).to.deep.equal(["effective_from"]);
    await expectError(client(ModelConfigService, TOKENS.service).scheduleModelPriceVersion({ ...modelRequest, backdate: true }), Code.PermissionDenied);
    const backdated = (await models().scheduleModelPriceVersion({ ...modelRequest, backdate: true })).version!;
    expect(backdated).to.include({ backdated: true, state: PriceVersionState.IN_FORCE });
    const modelHistory = (await models().listModelConfigHistory({ modelName: model })).entries;
    expect(modelHistory[0]).to.include({ action: "backdate_price", actor: "ops-ana" });
    expect(modelHistory[0]!.before).to.include({ input_cost_per_1m: "1.0000" });
    expect(modelHistory[0]!.after).to.include({ version_id: backdated.id, input_cost_per_1m: "0.5000", backdated: true });
  });

  it("cancels a version not yet in force, never one in force; bad input changes nothing", async () => {
    const op = await newOperation();
    const effective = new Date(Date.now() + 1_000);
    const { version } = await admin().scheduleCostConfigVersion({ operationType: op, tokensPerCredit: 1n, minCredits: 0n, pricePerCreditUsd: "0.0100", effectiveFrom: at(effective) });
    const dup = await expectError(
      admin().scheduleCostConfigVersion({ operationType: op, tokensPerCredit: 2n, minCredits: 0n, pricePerCreditUsd: "0.0100", effectiveFrom: at(effective) }),
      Code.InvalidArgument,
    );
    expect(badFields(dup)).to.deep.equal(["effective_from"]);
    const cancelled = (await admin().cancelCostConfigVersion({ versionId: version!.id })).version!;
    expect(cancelled).to.include({ state: PriceVersionState.CANCELLED, cancelledBy: "ops-ana" });
    expect((await admin().cancelCostConfigVersion({ versionId: version!.id })).version).to.include({ state: PriceVersionState.CANCELLED });
    await until(effective);
    expect((await svc().estimateCredits({ operationType: op, usage: { tokensInput: 1000n } })).credits).to.equal(10n);
    const inForce = (await svc().getCostConfig({ operationType: op })).costConfig!.versionId;
    await expectError(admin().cancelCostConfigVersion({ versionId: inForce }), Code.FailedPrecondition, "INVALID_STATE_TRANSITION");
    expect(badFields(await expectError(admin().cancelCostConfigVersion({ versionId: "abc" }), Code.InvalidArgument))).to.deep.equal(["version_id"]);
    await expectError(admin().cancelCostConfigVersion({ versionId: "999999999999" }), Code.NotFound, "NOT_FOUND");
    const history = (await svc().listCostConfigHistory({ operationType: op })).entries.map((e) => e.action);
    expect(history.slice(0, 2)).to.deep.equal(["cancel_version", "schedule_version"]);
    // Model versions: the same.
    const model = await newTextModel();
    const later = (await models().scheduleModelPriceVersion({ modelName: model, inputCostPer1m: "9.0000", outputCostPer1m: "9.0000", effectiveFrom: at(new Date(Date.now() + 60_000)) })).version!;
    expect((await models().cancelModelPriceVersion({ versionId: later.id })).version).to.include({ state: PriceVersionState.CANCELLED });
    const current = (await models().getModelConfig({ modelName: model })).modelConfig!.priceVersionId;
    await expectError(models().cancelModelPriceVersion({ versionId: current }), Code.FailedPrecondition, "INVALID_STATE_TRANSITION");
    const wrong = await expectError(models().scheduleModelPriceVersion({ modelName: model, costPerImage: "0.0400" }), Code.InvalidArgument);
    expect(badFields(wrong)).to.have.members(["cost_per_image", "input_cost_per_1m", "output_cost_per_1m"]);
    expect((await models().listModelPriceVersions({ modelName: model })).versions.map((v) => v.state)).to.deep.equal([PriceVersionState.CANCELLED, PriceVersionState.IN_FORCE]);
  });

  it("the coalesced path prices each deduction at its arrival, even when its batch commits after a new version", async () => {
    const op = await newOperation();
    const account = await funded(10_000n);
    const usage = { tokensInput: 1000n };
    const oldVersion = (await svc().getCostConfig({ operationType: op })).costConfig!.versionId;
    const single = await svc().deductCredits({ accountId: account, operationType: op, usage, idempotencyKey: key() });
    expect(single.usageLog).to.include({ creditsUsed: 10n, costConfigVersionId: oldVersion });
    const effective = new Date(Date.now() + 1_500);
    const rise = (await admin().scheduleCostConfigVersion({ operationType: op, tokensPerCredit: 20n, minCredits: 1n, pricePerCreditUsd: "0.0100", effectiveFrom: at(effective) })).version!;
    // Hold the account's row lock, so the batch of these deductions cannot commit before the new version is in force.
    const t = await harness().sequelize.transaction();
    let burst: Promise<{ transaction?: { amount: bigint }; usageLog?: { costConfigVersionId: string; createdAt?: unknown } }[]>;
    try {
      await harness().sequelize.query(`SELECT 1 FROM billing_accounts WHERE account_id = $1 FOR UPDATE`, { bind: [account], transaction: t });
      burst = Promise.all(Array.from({ length: 8 }, () => svc().deductCredits({ accountId: account, operationType: op, usage, idempotencyKey: key() })));
      await until(effective);
      await sleep(200);
      // Nothing of the burst is committed yet: it commits after the new version took effect.
      const [row] = await harness().sequelize.query<{ n: number }>(`SELECT count(*)::int AS n FROM credit_usage_logs WHERE account_id = $1`, { bind: [account], type: "SELECT" as never });
      expect(row!.n).to.equal(1);
    } finally {
      await t.commit();
    }
    const results = await burst!;
    for (const r of results) {
      expect(r.transaction?.amount).to.equal(-10n);
      expect(r.usageLog?.costConfigVersionId).to.equal(oldVersion);
    }
    const after = await Promise.all(Array.from({ length: 4 }, () => svc().deductCredits({ accountId: account, operationType: op, usage, idempotencyKey: key() })));
    for (const r of after) expect(r.usageLog).to.include({ creditsUsed: 50n, costConfigVersionId: rise.id });
  });

  it("an update of prices is a version in force at once; history keeps before and after", async () => {
    const op = await newOperation();
    const res = await admin().updateCostConfig({ costConfig: { operationType: op, tokensPerCredit: 200n, creditRoundingMode: CreditRoundingMode.DOWN }, updateMask: { paths: ["tokens_per_credit", "credit_rounding_mode"] } });
    expect(res.costConfig).to.include({ tokensPerCredit: 200n, previousTokensPerCredit: 100n, creditRoundingMode: CreditRoundingMode.DOWN });
    expect((await svc().estimateCredits({ operationType: op, usage: { tokensInput: 399n } })).credits).to.equal(1n); // 1.995, rounded down for this operation
    const history = (await svc().listCostConfigHistory({ operationType: op })).entries[0]!;
    expect(history.before).to.include({ tokens_per_credit: 100 });
    expect(history.after).to.include({ tokens_per_credit: 200, version_id: res.costConfig!.versionId, credit_rounding_mode: "down" });
    expect((await svc().listCostConfigVersions({ operationType: op })).versions).to.have.length(2);
  });

  it("GetUsageSummary reports cost at the prices of the time, and repriced at another instant", async () => {
    const op = await newOperation();
    const model = await newTextModel();
    const account = await funded(1000n);
    await svc().deductCredits({ accountId: account, operationType: op, usage: { tokensInput: 1_000n, tokensOutput: 1_000n, model }, idempotencyKey: key() }); // $0.0030
    await svc().deductCredits({ accountId: account, operationType: op, usage: { credits: 3n }, idempotencyKey: key() }); // no model
    await client(ModelConfigService, TOKENS.opsAdmin, "grpc-http2").updateModelConfig({ modelConfig: { modelName: model, inputCostPer1m: "10.0000" }, updateMask: { paths: ["input_cost_per_1m"] } });
    const summary = await svc().getUsageSummary({ accountId: account, groupBy: UsageGroupBy.OPERATION, repriceAt: at(new Date()) });
    expect(summary.total).to.include({ costUsd: "0.0030", repricedCostUsd: "0.0120", operations: 2n });
    const plain = await svc().getUsageSummary({ accountId: account, groupBy: UsageGroupBy.OPERATION });
    expect(plain.total).to.include({ costUsd: "0.0030", repricedCostUsd: "" });
  });
});
