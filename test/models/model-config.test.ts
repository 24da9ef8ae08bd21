/**
 * ModelConfigService through the API: the catalogue, one default per type
 * (also under racing calls), exact costs, history, and permissions.
 */
import { Code } from "@connectrpc/connect";
import * as grpc from "@grpc/grpc-js";
import { expect } from "chai";
import { randomUUID } from "node:crypto";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { ModelConfigSchema, ModelConfigService, ModelType, Provider } from "../../gen/billing/v1/model_config_service_pb.js";
import { TOKENS, badFields, client, expectError, grpcJsCall, grpcJsClient, harness } from "../harness.js";

type ModelInit = MessageInitShape<typeof ModelConfigSchema>;

const admin = () => client(ModelConfigService, TOKENS.admin);
const ops = () => client(ModelConfigService, TOKENS.opsAdmin, "grpc-http2");
const name = (p = "m") => `${p}-${randomUUID().slice(0, 8)}`;

function textModel(over: ModelInit = {}): ModelInit {
  return {
    modelName: name("gpt"),
    displayName: "GPT test",
    modelType: ModelType.TEXT,
    provider: Provider.OPENAI,
    inputCostPer1m: "0.1500",
    outputCostPer1m: "0.6000",
    contextWindow: 128000n,
    maxOutputTokens: 16384n,
    supportsJsonMode: true,
    isActive: true,
    ...over,
  };
}

function imageModel(over: ModelInit = {}): ModelInit {
  return {
    modelName: name("img"),
    displayName: "Image test",
    modelType: ModelType.IMAGE,
    provider: Provider.RUNWARE,
    costPerImage: "0.04",
    validSizes: ["1024x1024", "1024x1792"],
    isActive: true,
    ...over,
  };
}

async function defaultsOfType(type: string): Promise<number> {
  const [row] = (await harness().sequelize.query(`SELECT count(*)::int AS n FROM ai_model_configs WHERE model_type = $1 AND is_default`, {
    bind: [type],
    type: "SELECT",
  })) as unknown as { n: number }[];
  return row!.n;
}

describe("ModelConfigService", () => {
  describe("catalogue", () => {
    it("creates a text model and returns every field with full-scale prices", async () => {
      const req = textModel({ releaseDate: { year: 2024, month: 7, day: 18 }, description: "fast", sortOrder: 3 });
      const res = await admin().createModelConfig({ modelConfig: req });
      expect(res.modelConfig).to.include({
        modelName: req.modelName,
        modelType: ModelType.TEXT,
        provider: Provider.OPENAI,
        inputCostPer1m: "0.1500",
        outputCostPer1m: "0.6000",
        contextWindow: 128000n,
        supportsJsonMode: true,
        isActive: true,
        isDefault: false,
        sortOrder: 3,
        description: "fast",
        updatedBy: "admin",
      });
      expect(res.modelConfig?.releaseDate).to.include({ year: 2024, month: 7, day: 18 });
      const got = await client(ModelConfigService, TOKENS.accountA).getModelConfig({ modelName: req.modelName! });
      expect(got.modelConfig?.outputCostPer1m).to.equal("0.6000");
    });

    it("creates an image model with a per-image price and sizes", async () => {
      const res = await admin().createModelConfig({ modelConfig: imageModel() });
      expect(res.modelConfig).to.include({ costPerImage: "0.0400", inputCostPer1m: "" });
      expect(res.modelConfig?.validSizes).to.deep.equal(["1024x1024", "1024x1792"]);
    });

    it("rejects a text model without token prices, naming both fields, and writes nothing", async () => {
      const m = textModel({ inputCostPer1m: "", outputCostPer1m: "" });
      const err = await expectError(admin().createModelConfig({ modelConfig: m }), Code.InvalidArgument);
      expect(badFields(err)).to.have.members(["model_config.input_cost_per_1m", "model_config.output_cost_per_1m"]);
      await expectError(admin().getModelConfig({ modelName: m.modelName! }), Code.NotFound);
    });

    it("rejects an image model without its per-image price", async () => {
      const err = await expectError(admin().createModelConfig({ modelConfig: imageModel({ costPerImage: "" }) }), Code.InvalidArgument);
      expect(badFields(err)).to.deep.equal(["model_config.cost_per_image"]);
    });

    it("validates prices strictly: no exponents, negatives, extra decimals or overflow", async () => {
      for (const bad of ["1e-3", "-1.0000", "0.00001", "1000000.0000", "0.0000", "abc", "1,5"]) {
        const err = await expectError(admin().createModelConfig({ modelConfig: textModel({ inputCostPer1m: bad }) }), Code.InvalidArgument);
        expect(badFields(err), bad).to.deep.equal(["model_config.input_cost_per_1m"]);
      }
    });

    it("rejects missing type/provider, bad names, sizes and dates, each named", async () => {
      const err = await expectError(
        admin().createModelConfig({
          modelConfig: imageModel({
            modelName: "has space",
            displayName: "",
            provider: Provider.UNSPECIFIED,
            validSizes: ["big", "1024x1024", "1024x1024"],
            releaseDate: { year: 2024, month: 2, day: 30 },
          }),
        }),
        Code.InvalidArgument,
      );
      expect(badFields(err)).to.have.members([
        "model_config.model_name",
        "model_config.display_name",
        "model_config.provider",
        "model_config.valid_sizes[0]",
        "model_config.valid_sizes[2]",
        "model_config.release_date",
      ]);
      const err2 = await expectError(admin().createModelConfig({ modelConfig: textModel({ modelType: ModelType.UNSPECIFIED, modelName: "x".repeat(256) }) }), Code.InvalidArgument);
      expect(badFields(err2)).to.include.members(["model_config.model_type", "model_config.model_name"]);
    });

    it("rejects a duplicate model name as ALREADY_EXISTS", async () => {
      const m = textModel();
      await admin().createModelConfig({ modelConfig: m });
      await expectError(admin().createModelConfig({ modelConfig: m }), Code.AlreadyExists);
    });

    it("answers NOT_FOUND for an unknown model", async () => {
      await expectError(admin().getModelConfig({ modelName: "no-such-model" }), Code.NotFound, "NOT_FOUND");
    });

    it("lists by type, provider and active flag in the seed's order, paginated", async () => {
      const provider = Provider.GOOGLE;
      const tag = name("list");
      const made = [];
      for (const [i, active] of [[2, true], [1, true], [3, false]] as const) {
        made.push((await admin().createModelConfig({ modelConfig: textModel({ modelName: `${tag}-${i}`, provider, sortOrder: i, isActive: active }) })).modelConfig!);
      }
      const all: string[] = [];
      let pageToken = "";
      do {
        const res = await client(ModelConfigService, TOKENS.service).listModelConfigs({ modelType: ModelType.TEXT, provider, pageSize: 1, pageToken });
        all.push(...res.modelConfigs.map((m) => m.modelName));
        pageToken = res.nextPageToken;
      } while (pageToken);
      const ours = all.filter((n) => n.startsWith(tag));
      expect(ours).to.deep.equal([`${tag}-1`, `${tag}-2`, `${tag}-3`]);
      const active = await admin().listModelConfigs({ provider, activeOnly: true, pageSize: 500 });
      expect(active.modelConfigs.map((m) => m.modelName).filter((n) => n.startsWith(tag))).to.deep.equal([`${tag}-1`, `${tag}-2`]);
      expect(active.modelConfigs.every((m) => m.provider === provider && m.isActive)).to.equal(true);
    });

    it("keeps writes for admins; every role reads", async () => {
      for (const token of [TOKENS.service, TOKENS.accountA]) {
        await expectError(client(ModelConfigService, token).createModelConfig({ modelConfig: textModel() }), Code.PermissionDenied);
        await expectError(client(ModelConfigService, token).setDefaultModel({ modelName: "x" }), Code.PermissionDenied);
        await expectError(client(ModelConfigService, token).updateModelConfig({ modelConfig: textModel() }), Code.PermissionDenied);
        const res = await client(ModelConfigService, token).listModelConfigs({});
        expect(res.modelConfigs).to.be.an("array");
      }
    });
  });

  describe("updates and history", () => {
    it("changes only the masked fields and records who, when, before and after", async () => {
      const m = (await admin().createModelConfig({ modelConfig: textModel() })).modelConfig!;
      const res = await ops().updateModelConfig({
        modelConfig: { modelName: m.modelName, inputCostPer1m: "0.2000", displayName: "ignored: not in mask" },
        updateMask: { paths: ["input_cost_per_1m"] },
      });
      expect(res.modelConfig).to.include({ inputCostPer1m: "0.2000", outputCostPer1m: "0.6000", displayName: m.displayName, updatedBy: "ops-ana" });
      const history = await client(ModelConfigService, TOKENS.accountA).listModelConfigHistory({ modelName: m.modelName });
      expect(history.entries.map((e) => e.action)).to.deep.equal(["update", "create"]);
      expect(history.entries[0]).to.include({ actor: "ops-ana" });
      expect(history.entries[0]!.before).to.include({ input_cost_per_1m: "0.1500" });
      expect(history.entries[0]!.after).to.include({ input_cost_per_1m: "0.2000" });
      expect(history.entries[1]!.before).to.equal(undefined);
      expect(history.entries[0]!.createdAt).to.not.equal(undefined);
    });

    it("accepts the camelCase mask a Connect JSON caller sends for *_per_1m fields", async () => {
      const m = (await admin().createModelConfig({ modelConfig: textModel() })).modelConfig!;
      const res = await fetch(`${harness().baseUrl}/billing.v1.ModelConfigService/UpdateModelConfig`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${TOKENS.admin}` },
        body: JSON.stringify({ modelConfig: { modelName: m.modelName, outputCostPer1m: "0.7000" }, updateMask: "outputCostPer1m" }),
      });
      expect(res.status).to.equal(200);
      const body = (await res.json()) as { modelConfig: { outputCostPer1m: string; inputCostPer1m: string } };
      expect(body.modelConfig).to.include({ outputCostPer1m: "0.7000", inputCostPer1m: "0.1500" });
    });

    it("treats an empty mask as the populated fields", async () => {
      const m = (await admin().createModelConfig({ modelConfig: textModel() })).modelConfig!;
      const res = await admin().updateModelConfig({ modelConfig: { modelName: m.modelName, description: "now with notes", sortOrder: 9 } });
      expect(res.modelConfig).to.include({ description: "now with notes", sortOrder: 9, inputCostPer1m: "0.1500" });
    });

    it("rejects an unknown mask path and an update that breaks a rule, changing nothing", async () => {
      const m = (await admin().createModelConfig({ modelConfig: textModel() })).modelConfig!;
      let err = await expectError(admin().updateModelConfig({ modelConfig: { modelName: m.modelName }, updateMask: { paths: ["model_name"] } }), Code.InvalidArgument);
      expect(badFields(err)).to.deep.equal(["update_mask"]);
      err = await expectError(
        ops().updateModelConfig({ modelConfig: { modelName: m.modelName, outputCostPer1m: "" }, updateMask: { paths: ["output_cost_per_1m"] } }),
        Code.InvalidArgument,
      );
      expect(badFields(err)).to.deep.equal(["model_config.output_cost_per_1m"]);
      const history = await admin().listModelConfigHistory({ modelName: m.modelName });
      expect(history.entries).to.have.length(1);
      await expectError(admin().updateModelConfig({ modelConfig: { modelName: "nope-" + m.modelName, sortOrder: 1 } }), Code.NotFound);
    });

    it("pages through history", async () => {
      const m = (await admin().createModelConfig({ modelConfig: textModel() })).modelConfig!;
      for (let i = 1; i <= 3; i++) await admin().updateModelConfig({ modelConfig: { modelName: m.modelName, sortOrder: i }, updateMask: { paths: ["sort_order"] } });
      const first = await admin().listModelConfigHistory({ modelName: m.modelName, pageSize: 3 });
      expect(first.entries).to.have.length(3);
      const second = await admin().listModelConfigHistory({ modelName: m.modelName, pageSize: 3, pageToken: first.nextPageToken });
      expect(second.entries.map((e) => e.action)).to.deep.equal(["create"]);
      expect(second.nextPageToken).to.equal("");
    });
  });

  describe("defaults", () => {
    it("keeps exactly one default per type across SetDefaultModel and create", async () => {
      const a = (await admin().createModelConfig({ modelConfig: textModel() })).modelConfig!;
      const b = (await admin().createModelConfig({ modelConfig: textModel() })).modelConfig!;
      await admin().setDefaultModel({ modelName: a.modelName });
      expect((await admin().getDefaultModel({ modelType: ModelType.TEXT })).modelConfig?.modelName).to.equal(a.modelName);
      const res = await ops().setDefaultModel({ modelName: b.modelName });
      expect(res.modelConfig?.isDefault).to.equal(true);
      expect((await admin().getModelConfig({ modelName: a.modelName })).modelConfig?.isDefault).to.equal(false);
      const c = (await admin().createModelConfig({ modelConfig: textModel({ isDefault: true }) })).modelConfig!;
      expect((await client(ModelConfigService, TOKENS.accountA).getDefaultModel({ modelType: ModelType.TEXT })).modelConfig?.modelName).to.equal(c.modelName);
      expect(await defaultsOfType("text")).to.equal(1);
      const history = await admin().listModelConfigHistory({ modelName: b.modelName });
      expect(history.entries.map((e) => e.action)).to.include.members(["set_default", "unset_default"]);
    });

    it("ends with exactly one default when many SetDefaultModel calls race", async () => {
      const models: string[] = [];
      for (let i = 0; i < 5; i++) models.push((await admin().createModelConfig({ modelConfig: imageModel() })).modelConfig!.modelName);
      const results = await Promise.allSettled(Array.from({ length: 25 }, (_, i) => (i % 2 ? admin() : ops()).setDefaultModel({ modelName: models[i % 5]! })));
      expect(results.filter((r) => r.status === "rejected")).to.deep.equal([]);
      expect(await defaultsOfType("image")).to.equal(1);
      const def = await admin().getDefaultModel({ modelType: ModelType.IMAGE });
      expect(models).to.include(def.modelConfig?.modelName);
    });

    it("refuses an inactive model as default, and deactivating the default", async () => {
      const inactive = (await admin().createModelConfig({ modelConfig: textModel({ isActive: false }) })).modelConfig!;
      await expectError(admin().setDefaultModel({ modelName: inactive.modelName }), Code.FailedPrecondition, "MODEL_INACTIVE");
      const err = await expectError(admin().createModelConfig({ modelConfig: textModel({ isActive: false, isDefault: true }) }), Code.InvalidArgument);
      expect(badFields(err)).to.deep.equal(["model_config.is_default"]);
      const d = (await admin().createModelConfig({ modelConfig: textModel({ isDefault: true }) })).modelConfig!;
      await expectError(
        admin().updateModelConfig({ modelConfig: { modelName: d.modelName, isActive: false }, updateMask: { paths: ["is_active"] } }),
        Code.FailedPrecondition,
        "MODEL_IS_DEFAULT",
      );
    });

    it("answers NOT_FOUND when a type has no default, INVALID_ARGUMENT for UNSPECIFIED", async () => {
      await harness().sequelize.query(`UPDATE ai_model_configs SET is_default = false WHERE model_type = 'embedding'`);
      await expectError(admin().getDefaultModel({ modelType: ModelType.EMBEDDING }), Code.NotFound);
      const err = await expectError(admin().getDefaultModel({ modelType: ModelType.UNSPECIFIED }), Code.InvalidArgument);
      expect(badFields(err)).to.deep.equal(["model_type"]);
    });
  });

  describe("CalculateCost", () => {
    it("prices text exactly: (in x in_price + out x out_price) / 1M, scale 4", async () => {
      const m = (await admin().createModelConfig({ modelConfig: textModel() })).modelConfig!;
      const res = await client(ModelConfigService, TOKENS.service).calculateCost({ modelName: m.modelName, tokensInput: 1_234_567n, tokensOutput: 7_654_321n });
      // 1234567 * 0.15 + 7654321 * 0.6 = 185185.05 + 4592592.6 = 4777777.65 -> / 1e6 = 4.77777765
      expect(res.costUsd).to.equal("4.7778");
    });

    it("rounds half-up where floating point would round down", async () => {
      const m = (await admin().createModelConfig({ modelConfig: textModel({ inputCostPer1m: "4.0005", outputCostPer1m: "0.0001" }) })).modelConfig!;
      expect(((900_000 * 4.0005) / 1_000_000).toFixed(4)).to.equal("3.6004"); // the float is 3.60044999…
      const res = await admin().calculateCost({ modelName: m.modelName, tokensInput: 900_000n });
      expect(res.costUsd).to.equal("3.6005"); // exactly 3.60045, half-up
      const zero = await admin().calculateCost({ modelName: m.modelName });
      expect(zero.costUsd).to.equal("0.0000");
    });

    it("prices images per image and checks the size", async () => {
      const m = (await admin().createModelConfig({ modelConfig: imageModel() })).modelConfig!;
      expect((await admin().calculateCost({ modelName: m.modelName, imageCount: 3n, size: "1024x1792" })).costUsd).to.equal("0.1200");
      expect((await admin().calculateCost({ modelName: m.modelName, imageCount: 3n })).costUsd).to.equal("0.1200");
      const err = await expectError(admin().calculateCost({ modelName: m.modelName, imageCount: 1n, size: "512x512" }), Code.InvalidArgument);
      expect(badFields(err)).to.deep.equal(["size"]);
    });

    it("refuses a text price of an image model and the reverse", async () => {
      const img = (await admin().createModelConfig({ modelConfig: imageModel() })).modelConfig!;
      const txt = (await admin().createModelConfig({ modelConfig: textModel() })).modelConfig!;
      await expectError(admin().calculateCost({ modelName: img.modelName, tokensInput: 10n }), Code.FailedPrecondition, "WRONG_MODEL_TYPE");
      await expectError(admin().calculateCost({ modelName: txt.modelName, imageCount: 1n }), Code.FailedPrecondition, "WRONG_MODEL_TYPE");
    });

    it("refuses a missing price, an unknown model and negative counts", async () => {
      const emb = (await admin().createModelConfig({ modelConfig: textModel({ modelType: ModelType.EMBEDDING, outputCostPer1m: "" }) })).modelConfig!;
      expect((await admin().calculateCost({ modelName: emb.modelName, tokensInput: 1_000_000n })).costUsd).to.equal("0.1500");
      await expectError(admin().calculateCost({ modelName: emb.modelName, tokensOutput: 5n }), Code.FailedPrecondition, "PRICE_MISSING");
      await expectError(admin().calculateCost({ modelName: "no-such-model", tokensInput: 1n }), Code.NotFound);
      const err = await expectError(admin().calculateCost({ modelName: emb.modelName, tokensInput: -1n }), Code.InvalidArgument);
      expect(badFields(err)).to.deep.equal(["tokens_input"]);
    });

    it("answers grpc-js callers with the decimal string", async () => {
      const m = (await admin().createModelConfig({ modelConfig: textModel() })).modelConfig!;
      const c = grpcJsClient("ModelConfigService");
      try {
        const res = await grpcJsCall<{ costUsd: string }>(c, "CalculateCost", { modelName: m.modelName, tokensInput: "1000000", tokensOutput: "1000000" }, TOKENS.accountB);
        expect(res.costUsd).to.equal("0.7500");
        const err = (await grpcJsCall(c, "CalculateCost", { modelName: "nope" }, TOKENS.accountB).catch((e: grpc.ServiceError) => e)) as grpc.ServiceError;
        expect(err.code).to.equal(grpc.status.NOT_FOUND);
      } finally {
        c.close();
      }
    });
  });
});
