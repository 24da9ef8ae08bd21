/**
 * Pricing through the API: EstimateCredits and token/image-priced
 * DeductCredits, rounding modes, min credits, cost configs with history, and
 * the billing configuration.
 */
import { Code } from "@connectrpc/connect";
import { expect } from "chai";
import { CreditRoundingMode, CreditService, CreditTransactionType } from "../../gen/billing/v1/credit_service_pb.js";
import { TOKENS, badFields, client, expectError, key, newAccount } from "../harness.js";
import { ensureModel } from "./ledger.test.js";

const svc = () => client(CreditService, TOKENS.service);
const admin = () => client(CreditService, TOKENS.opsAdmin, "grpc-http2");

async function setRounding(mode: CreditRoundingMode) {
  await admin().updateBillingConfiguration({ billingConfiguration: { creditRoundingMode: mode }, updateMask: { paths: ["credit_rounding_mode"] } });
}

async function resetCostConfig(op: string) {
  await admin().updateCostConfig({
    costConfig: { operationType: op, tokensPerCredit: 100n, minCredits: 1n, pricePerCreditUsd: "0.0100", isActive: true },
    updateMask: { paths: ["tokens_per_credit", "min_credits", "price_per_credit_usd", "is_active"] },
  });
}

describe("CreditService pricing", () => {
  before(async () => {
    await ensureModel("gpt-4o-mini", { inputCostPer1m: "0.1500", outputCostPer1m: "0.6000" });
    await ensureModel("pricing-image-model", { costPerImage: "0.0400", validSizes: ["1024x1024"] });
  });
  afterEach(async () => {
    await setRounding(CreditRoundingMode.UP);
    await resetCostConfig("reparse");
    await resetCostConfig("image_generation");
  });

  it("prices a fresh install with the seeded defaults: 100 tokens per credit, rounded up, min 1", async () => {
    const cfg = await client(CreditService, TOKENS.accountA).getCostConfig({ operationType: "content_generation" });
    expect(cfg.costConfig).to.include({ tokensPerCredit: 100n, minCredits: 1n, pricePerCreditUsd: "0.0100", isActive: true });
    const billing = await client(CreditService, TOKENS.accountA).getBillingConfiguration({});
    expect(billing.billingConfiguration).to.include({ creditRoundingMode: CreditRoundingMode.UP, defaultTokensPerCredit: 100n, defaultCreditPriceUsd: "0.0100" });
    const est = await svc().estimateCredits({ operationType: "content_generation", usage: { tokensInput: 1200n, tokensOutput: 801n, model: "gpt-4o-mini" } });
    expect(est.credits).to.equal(21n); // 2001 / 100 = 20.01 -> up -> 21
    expect(est.costUsd).to.equal("0.0007"); // (1200 x 0.15 + 801 x 0.60) / 1M = 0.0006606
    expect(est.operationType).to.equal("content_generation");
    expect((await svc().estimateCredits({ operationType: "ideas", usage: { tokensInput: 1n } })).credits).to.equal(1n);
  });

  it("rounds UP, DOWN and NEAREST as configured, never below min_credits", async () => {
    const usage = { tokensInput: 150n, tokensOutput: 100n }; // 250 tokens = 2.5 credits
    const estimate = async () => (await svc().estimateCredits({ operationType: "reparse", usage })).credits;
    expect(await estimate()).to.equal(3n);
    await setRounding(CreditRoundingMode.DOWN);
    expect(await estimate()).to.equal(2n);
    await setRounding(CreditRoundingMode.NEAREST);
    expect(await estimate()).to.equal(3n);
    expect((await svc().estimateCredits({ operationType: "reparse", usage: { tokensInput: 249n } })).credits).to.equal(2n);
    await admin().updateCostConfig({ costConfig: { operationType: "reparse", minCredits: 5n }, updateMask: { paths: ["min_credits"] } });
    expect(await estimate()).to.equal(5n);
  });

  it("charges the same credits DeductCredits as EstimateCredits, with cost_usd from the model", async () => {
    const account = newAccount();
    await svc().grantCredits({ accountId: account, amount: 100n, type: CreditTransactionType.PURCHASE, idempotencyKey: key() });
    const usage = { tokensInput: 1234n, tokensOutput: 567n, model: "gpt-4o-mini" };
    const est = await svc().estimateCredits({ operationType: "content", usage });
    const res = await svc().deductCredits({ accountId: account, operationType: "content", usage, idempotencyKey: key() });
    expect(res.transaction?.amount).to.equal(-est.credits);
    expect(res.usageLog).to.include({ creditsUsed: est.credits, costUsd: est.costUsd, modelUsed: "gpt-4o-mini", tokensInput: 1234n, tokensOutput: 567n, operationType: "content_generation" });
    expect(res.balance?.balance).to.equal(100n - est.credits);
  });

  it("prices images from the image model's cost and the price per credit", async () => {
    // 3 images x $0.04 = $0.12; / $0.01 per credit = 12 credits
    const est = await svc().estimateCredits({ operationType: "images", usage: { imageCount: 3n, model: "pricing-image-model" } });
    expect(est).to.include({ credits: 12n, costUsd: "0.1200" });
    await admin().updateCostConfig({ costConfig: { operationType: "image_generation", pricePerCreditUsd: "0.0300" }, updateMask: { paths: ["price_per_credit_usd"] } });
    expect((await svc().estimateCredits({ operationType: "image_generation", usage: { imageCount: 3n, model: "pricing-image-model" } })).credits).to.equal(4n);
    const err = await expectError(svc().estimateCredits({ operationType: "image_generation", usage: { imageCount: 1n } }), Code.InvalidArgument);
    expect(badFields(err)).to.deep.equal(["usage.model"]);
  });

  it("refuses an inactive operation, an unknown model, an unknown operation and empty usage, writing nothing", async () => {
    const account = newAccount();
    await svc().grantCredits({ accountId: account, amount: 100n, type: CreditTransactionType.PURCHASE, idempotencyKey: key() });
    await admin().updateCostConfig({ costConfig: { operationType: "reparse", isActive: false }, updateMask: { paths: ["is_active"] } });
    await expectError(svc().deductCredits({ accountId: account, operationType: "reparse", usage: { tokensInput: 10n }, idempotencyKey: key() }), Code.FailedPrecondition, "OPERATION_INACTIVE");
    let err = await expectError(svc().deductCredits({ accountId: account, operationType: "clustering", usage: { tokensInput: 10n, model: "no-such-model" }, idempotencyKey: key() }), Code.InvalidArgument);
    expect(badFields(err)).to.deep.equal(["usage.model"]);
    err = await expectError(svc().estimateCredits({ operationType: "nope", usage: {} }), Code.InvalidArgument);
    expect(badFields(err)).to.have.members(["operation_type", "usage"]);
    expect((await svc().getBalance({ accountId: account })).balance?.balance).to.equal(100n);
    expect((await svc().listTransactions({ accountId: account })).transactions).to.have.length(1);
  });

  describe("cost configs", () => {
    it("lists every operation type, paginated: the seeded ten (and any an admin added)", async () => {
      const first = await svc().listCostConfigs({ pageSize: 4 });
      expect(first.costConfigs).to.have.length(4);
      const rest = await svc().listCostConfigs({ pageSize: 500, pageToken: first.nextPageToken });
      const ops = [...first.costConfigs, ...rest.costConfigs].map((c) => c.operationType);
      expect(new Set(ops).size, "no duplicates across pages").to.equal(ops.length);
      expect(ops).to.include.members([
        "clustering",
        "idea_generation",
        "content_generation",
        "image_generation",
        "image_prompt_extraction",
        "linking",
        "optimization",
        "reparse",
        "site_page_generation",
        "site_structure_generation",
      ]);
    });

    it("keeps previous_tokens_per_credit and a history with who and when", async () => {
      const res = await admin().updateCostConfig({ costConfig: { operationType: "reparse", tokensPerCredit: 250n }, updateMask: { paths: ["tokens_per_credit"] } });
      expect(res.costConfig).to.include({ tokensPerCredit: 250n, previousTokensPerCredit: 100n, updatedBy: "ops-ana" });
      const history = await client(CreditService, TOKENS.accountA).listCostConfigHistory({ operationType: "reparse", pageSize: 1 });
      expect(history.entries[0]).to.include({ action: "update", actor: "ops-ana" });
      expect(history.entries[0]!.before).to.include({ tokens_per_credit: 100 });
      expect(history.entries[0]!.after).to.include({ tokens_per_credit: 250, previous_tokens_per_credit: 100 });
      expect(history.nextPageToken).to.not.equal("");
    });

    it("rejects bad values and unknown fields, and keeps updates for admins", async () => {
      let err = await expectError(
        admin().updateCostConfig({ costConfig: { operationType: "reparse", tokensPerCredit: 0n, pricePerCreditUsd: "0.00001" }, updateMask: { paths: ["tokens_per_credit", "price_per_credit_usd"] } }),
        Code.InvalidArgument,
      );
      expect(badFields(err)).to.have.members(["cost_config.tokens_per_credit", "cost_config.price_per_credit_usd"]);
      err = await expectError(admin().updateCostConfig({ costConfig: { operationType: "reparse" }, updateMask: { paths: ["operation_type"] } }), Code.InvalidArgument);
      expect(badFields(err)).to.deep.equal(["update_mask"]);
      await expectError(svc().updateCostConfig({ costConfig: { operationType: "reparse", minCredits: 2n }, updateMask: { paths: ["min_credits"] } }), Code.PermissionDenied);
      err = await expectError(svc().getCostConfig({ operationType: "teleport" }), Code.InvalidArgument);
      expect(badFields(err)).to.deep.equal(["operation_type"]);
    });
  });

  describe("billing configuration", () => {
    it("updates the masked fields for admins only", async () => {
      const res = await admin().updateBillingConfiguration({
        billingConfiguration: { defaultCreditPriceUsd: "0.0125", creditRoundingMode: CreditRoundingMode.NEAREST },
        updateMask: { paths: ["default_credit_price_usd"] },
      });
      expect(res.billingConfiguration).to.include({ defaultCreditPriceUsd: "0.0125", creditRoundingMode: CreditRoundingMode.UP, updatedBy: "ops-ana" });
      await expectError(svc().updateBillingConfiguration({ billingConfiguration: { defaultTokensPerCredit: 5n }, updateMask: { paths: ["default_tokens_per_credit"] } }), Code.PermissionDenied);
      const err = await expectError(
        admin().updateBillingConfiguration({ billingConfiguration: { creditRoundingMode: CreditRoundingMode.UNSPECIFIED }, updateMask: { paths: ["credit_rounding_mode"] } }),
        Code.InvalidArgument,
      );
      expect(badFields(err)).to.deep.equal(["billing_configuration.credit_rounding_mode"]);
      await admin().updateBillingConfiguration({ billingConfiguration: { defaultCreditPriceUsd: "0.0100" }, updateMask: { paths: ["default_credit_price_usd"] } });
    });
  });
});
