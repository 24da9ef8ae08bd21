/**
 * Operation types are data (CreateCostConfig), and models may name any
 * provider (PROVIDER_OTHER + provider_name): the contract issue's
 * "configurable catalogues".
 */
import { Code } from "@connectrpc/connect";
import { expect } from "chai";
import { randomUUID } from "node:crypto";
import { CreditService, CreditTransactionType } from "../../gen/billing/v1/credit_service_pb.js";
import { ModelConfigService, ModelType, Provider } from "../../gen/billing/v1/model_config_service_pb.js";
import { PROTOCOLS, TOKENS, badFields, client, expectError, key, newAccount } from "../harness.js";

const admin = () => client(CreditService, TOKENS.opsAdmin, "grpc-http2");
const op = () => `chat_completion_${randomUUID().slice(0, 8).replace(/-/g, "")}`;

describe("operation types as data (CreateCostConfig)", () => {
  it("adds an operation that DeductCredits, EstimateCredits and ReserveCredits then price, with history", async () => {
    const name = op();
    const created = await admin().createCostConfig({ costConfig: { operationType: name, displayName: "Chat completion", tokensPerCredit: 50n } });
    expect(created.costConfig).to.include({ operationType: name, displayName: "Chat completion", tokensPerCredit: 50n, minCredits: 1n, pricePerCreditUsd: "0.0100", isActive: true });
    const estimate = await client(CreditService, TOKENS.service).estimateCredits({ operationType: name, usage: { tokensInput: 120n, tokensOutput: 30n } });
    expect(estimate.credits).to.equal(3n); // 150 tokens / 50 per credit
    const account = newAccount("op");
    await admin().grantCredits({ accountId: account, amount: 10n, type: CreditTransactionType.ADJUSTMENT, idempotencyKey: key() });
    for (const protocol of PROTOCOLS) {
      const d = await client(CreditService, TOKENS.service, protocol).deductCredits({ accountId: account, operationType: name, usage: { tokensInput: 50n }, idempotencyKey: key() });
      expect(d.usageLog?.operationType).to.equal(name);
    }
    const hold = await client(CreditService, TOKENS.service).reserveCredits({ accountId: account, operationType: name, credits: 2n, idempotencyKey: key() });
    expect(hold.reservation?.operationType).to.equal(name);
    const history = await admin().listCostConfigHistory({ operationType: name });
    expect(history.entries.map((e) => [e.action, e.actor])).to.deep.equal([["create", "ops-ana"]]);
    const listed = await admin().listCostConfigs({ pageSize: 500 });
    expect(listed.costConfigs.map((c) => c.operationType)).to.include(name);
  });

  it("refuses an unknown operation type with INVALID_ARGUMENT naming operation_type, with the request's other bad fields", async () => {
    const err = await expectError(
      client(CreditService, TOKENS.service).deductCredits({ accountId: newAccount(), operationType: "teleport", usage: { credits: 1n }, idempotencyKey: "" }),
      Code.InvalidArgument,
    );
    expect(badFields(err)).to.have.members(["operation_type", "idempotency_key"]);
    await expectError(client(CreditService, TOKENS.service).reserveCredits({ accountId: newAccount(), operationType: "teleport", credits: 1n, idempotencyKey: key() }), Code.InvalidArgument);
  });

  it("refuses bad names, duplicates, legacy names and non-admins, writing nothing", async () => {
    const name = op();
    await admin().createCostConfig({ costConfig: { operationType: name, displayName: "X" } });
    await expectError(admin().createCostConfig({ costConfig: { operationType: name, displayName: "X" } }), Code.AlreadyExists);
    await expectError(admin().createCostConfig({ costConfig: { operationType: "clustering", displayName: "X" } }), Code.AlreadyExists);
    let err = await expectError(admin().createCostConfig({ costConfig: { operationType: "images", displayName: "X" } }), Code.InvalidArgument);
    expect(badFields(err)).to.deep.equal(["cost_config.operation_type"]);
    err = await expectError(admin().createCostConfig({ costConfig: { operationType: "Chat Completion", displayName: "", tokensPerCredit: -1n } }), Code.InvalidArgument);
    expect(badFields(err)).to.have.members(["cost_config.operation_type", "cost_config.display_name", "cost_config.tokens_per_credit"]);
    await expectError(client(CreditService, TOKENS.service).createCostConfig({ costConfig: { operationType: op(), displayName: "X" } }), Code.PermissionDenied);
    const missing = op();
    await expectError(admin().getCostConfig({ operationType: missing }), Code.InvalidArgument);
  });
});

describe("models of any provider (PROVIDER_OTHER + provider_name)", () => {
  const models = () => client(ModelConfigService, TOKENS.admin);
  const text = (modelName: string, provider: Provider, providerName: string) => ({
    modelName,
    displayName: modelName,
    modelType: ModelType.TEXT,
    provider,
    providerName,
    inputCostPer1m: "1.0000",
    outputCostPer1m: "2.0000",
    contextWindow: 1000n,
    maxOutputTokens: 100n,
    isActive: true,
  });

  it("creates a model of another provider and answers it as PROVIDER_OTHER with its name; known ones carry their name too", async () => {
    const name = `mistral-${randomUUID().slice(0, 8)}`;
    const created = await models().createModelConfig({ modelConfig: text(name, Provider.OTHER, "mistral") });
    expect(created.modelConfig).to.include({ provider: Provider.OTHER, providerName: "mistral" });
    const listed = await models().listModelConfigs({ providerName: "mistral", pageSize: 500 });
    expect(listed.modelConfigs.map((m) => m.modelName)).to.include(name);
    const openai = await models().createModelConfig({ modelConfig: text(`oa-${randomUUID().slice(0, 8)}`, Provider.OPENAI, "") });
    expect(openai.modelConfig).to.include({ provider: Provider.OPENAI, providerName: "openai" });
  });

  it("refuses PROVIDER_OTHER without a name, a known provider's name under OTHER, a clash, and a bad name", async () => {
    const bad = async (provider: Provider, providerName: string) =>
      badFields(await expectError(models().createModelConfig({ modelConfig: text(`x-${randomUUID().slice(0, 8)}`, provider, providerName) }), Code.InvalidArgument));
    expect(await bad(Provider.OTHER, "")).to.deep.equal(["model_config.provider_name"]);
    expect(await bad(Provider.OTHER, "openai")).to.deep.equal(["model_config.provider_name"]);
    expect(await bad(Provider.ANTHROPIC, "openai")).to.deep.equal(["model_config.provider_name"]);
    expect(await bad(Provider.OTHER, "Mistral AI")).to.deep.equal(["model_config.provider_name"]);
    const err = await expectError(models().listModelConfigs({ providerName: "mist\u0000ral" }), Code.InvalidArgument);
    expect(badFields(err)).to.deep.equal(["provider_name"]);
  });
});
