/**
 * ModelConfigService: proto <-> domain mapping for the model catalogue.
 */
import { create } from "@bufbuild/protobuf";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import {
  CalculateCostResponseSchema,
  CreateModelConfigResponseSchema,
  GetDefaultModelResponseSchema,
  GetModelConfigResponseSchema,
  ListModelConfigHistoryResponseSchema,
  ListModelConfigsResponseSchema,
  ModelConfigSchema,
  ModelConfigService,
  ModelType as ProtoModelType,
  Provider as ProtoProvider,
  SetDefaultModelResponseSchema,
  UpdateModelConfigResponseSchema,
  CancelModelPriceVersionResponseSchema,
  ListModelPriceVersionsResponseSchema,
  ModelPriceVersionSchema,
  ScheduleModelPriceVersionResponseSchema,
  type ModelConfig,
} from "../../gen/billing/v1/model_config_service_pb.js";
import { PROVIDER_NAME_RE, type ModelCatalogue, type ModelInput, type ModelPriceVersionView, type ModelRecord, type ModelType, type Provider } from "../domain/models/catalogue.js";
import { invalidField } from "../domain/errors.js";
import { principalOf } from "../auth/principal.js";
import { auditToProto, calendarDateToProto, dateOf, enumFromProto, enumToProto, ts, txOptions, versionTimesToProto } from "./convert.js";

const modelTypes: [ProtoModelType, ModelType][] = [
  [ProtoModelType.TEXT, "text"],
  [ProtoModelType.IMAGE, "image"],
  [ProtoModelType.EMBEDDING, "embedding"],
];
const providers: [ProtoProvider, Provider][] = [
  [ProtoProvider.OPENAI, "openai"],
  [ProtoProvider.ANTHROPIC, "anthropic"],
  [ProtoProvider.RUNWARE, "runware"],
  [ProtoProvider.GOOGLE, "google"],
];

/**
 * A provider from the enum and/or a name: a known provider by its enum value
 * (the name, if given, must agree), any other as PROVIDER_OTHER + its name.
 */
function providerOf(value: ProtoProvider, name: string, field: string): Provider | undefined {
  if (name !== "" && !PROVIDER_NAME_RE.test(name)) throw invalidField(`${field}_name`, "must be lowercase letters, digits, - and _ (at most 50), starting with a letter");
  if (value === ProtoProvider.OTHER) {
    if (name === "") throw invalidField(`${field}_name`, "is required with PROVIDER_OTHER");
    if (providers.some(([, known]) => known === name)) throw invalidField(`${field}_name`, `names a provider with its own value: use PROVIDER_${name.toUpperCase()}`);
    return name;
  }
  const known = enumFromProto(providers, value, field);
  if (known && name !== "" && name !== known) throw invalidField(`${field}_name`, `must be empty or ${JSON.stringify(known)} with PROVIDER_${known.toUpperCase()}`);
  return known ?? (name === "" ? undefined : name);
}

function providerToProto(name: Provider): { provider: ProtoProvider; providerName: string } {
  const known = providers.find(([, p]) => p === name);
  return { provider: known ? known[0] : ProtoProvider.OTHER, providerName: name };
}

function inputOf(m: ModelConfig | undefined): ModelInput {
  const c = m ?? create(ModelConfigSchema);
  return {
    modelName: c.modelName,
    displayName: c.displayName,
    modelType: enumFromProto(modelTypes, c.modelType, "model_config.model_type"),
    provider: providerOf(c.provider, c.providerName, "model_config.provider"),
    inputCostPer1m: c.inputCostPer1m,
    outputCostPer1m: c.outputCostPer1m,
    contextWindow: c.contextWindow,
    maxOutputTokens: c.maxOutputTokens,
    costPerImage: c.costPerImage,
    validSizes: c.validSizes,
    supportsJsonMode: c.supportsJsonMode,
    supportsVision: c.supportsVision,
    supportsFunctionCalling: c.supportsFunctionCalling,
    isActive: c.isActive,
    isDefault: c.isDefault,
    sortOrder: c.sortOrder,
    description: c.description,
    releaseDate: c.releaseDate,
    deprecationDate: c.deprecationDate,
  };
}

function modelToProto(r: ModelRecord): ModelConfig {
  return create(ModelConfigSchema, {
    modelName: r.modelName,
    displayName: r.displayName,
    modelType: enumToProto(modelTypes, r.modelType),
    ...providerToProto(r.provider),
    inputCostPer1m: r.inputCostPer1m,
    outputCostPer1m: r.outputCostPer1m,
    contextWindow: BigInt(r.contextWindow),
    maxOutputTokens: BigInt(r.maxOutputTokens),
    costPerImage: r.costPerImage,
    validSizes: r.validSizes,
    supportsJsonMode: r.supportsJsonMode,
    supportsVision: r.supportsVision,
    supportsFunctionCalling: r.supportsFunctionCalling,
    isActive: r.isActive,
    isDefault: r.isDefault,
    sortOrder: r.sortOrder,
    description: r.description,
    releaseDate: calendarDateToProto(r.releaseDate),
    deprecationDate: calendarDateToProto(r.deprecationDate),
    updatedBy: r.updatedBy,
    createdAt: ts(r.createdAt),
    updatedAt: ts(r.updatedAt),
    priceVersionId: r.priceVersionId,
    priceEffectiveFrom: ts(r.priceEffectiveFrom),
  });
}

function versionToProto(v: ModelPriceVersionView) {
  return create(ModelPriceVersionSchema, {
    ...versionTimesToProto(v),
    modelName: v.modelName,
    inputCostPer1m: v.inputCostPer1m,
    outputCostPer1m: v.outputCostPer1m,
    costPerImage: v.costPerImage,
  });
}

/** The whole ModelConfigService. */
export function createModelConfigServiceHandler(catalogue: ModelCatalogue): ServiceImpl<typeof ModelConfigService> {
  return {
    async createModelConfig(req, ctx: HandlerContext) {
      const r = await catalogue.create(inputOf(req.modelConfig), principalOf(ctx).name, txOptions(ctx));
      return create(CreateModelConfigResponseSchema, { modelConfig: modelToProto(r) });
    },
    async getModelConfig(req) {
      const at = dateOf(req.at, "at");
      return create(GetModelConfigResponseSchema, { modelConfig: modelToProto(await catalogue.get(req.modelName, at)) });
    },
    async listModelConfigs(req) {
      const r = await catalogue.list({
        modelType: enumFromProto(modelTypes, req.modelType, "model_type"),
        provider: providerOf(req.provider, req.providerName, "provider"),
        activeOnly: req.activeOnly,
        pageSize: req.pageSize,
        pageToken: req.pageToken,
      });
      return create(ListModelConfigsResponseSchema, { modelConfigs: r.models.map(modelToProto), nextPageToken: r.nextPageToken });
    },
    async updateModelConfig(req, ctx: HandlerContext) {
      // provider_name is the provider too, as a path (the domain counts a field named twice once).
      const paths = (req.updateMask?.paths ?? []).map((p) => p.replace(/provider_name$/, "provider"));
      const r = await catalogue.update(inputOf(req.modelConfig), paths, principalOf(ctx).name, txOptions(ctx));
      return create(UpdateModelConfigResponseSchema, { modelConfig: modelToProto(r) });
    },
    async setDefaultModel(req, ctx: HandlerContext) {
      const r = await catalogue.setDefault(req.modelName, principalOf(ctx).name, txOptions(ctx));
      return create(SetDefaultModelResponseSchema, { modelConfig: modelToProto(r) });
    },
    async getDefaultModel(req) {
      return create(GetDefaultModelResponseSchema, { modelConfig: modelToProto(await catalogue.getDefault(enumFromProto(modelTypes, req.modelType, "model_type"))) });
    },
    async calculateCost(req) {
      const cost = await catalogue.calculateCost({
        modelName: req.modelName,
        tokensInput: req.tokensInput,
        tokensOutput: req.tokensOutput,
        imageCount: req.imageCount,
        size: req.size,
        at: dateOf(req.at, "at"),
      });
      return create(CalculateCostResponseSchema, cost);
    },
    async scheduleModelPriceVersion(req, ctx: HandlerContext) {
      const r = await catalogue.schedulePriceVersion(
        {
          modelName: req.modelName,
          inputCostPer1m: req.inputCostPer1m,
          outputCostPer1m: req.outputCostPer1m,
          costPerImage: req.costPerImage,
          effectiveFrom: dateOf(req.effectiveFrom, "effective_from"),
          backdate: req.backdate,
        },
        principalOf(ctx).name,
        txOptions(ctx),
      );
      return create(ScheduleModelPriceVersionResponseSchema, { version: versionToProto(r) });
    },
    async cancelModelPriceVersion(req, ctx: HandlerContext) {
      return create(CancelModelPriceVersionResponseSchema, { version: versionToProto(await catalogue.cancelPriceVersion(req.versionId, principalOf(ctx).name, txOptions(ctx))) });
    },
    async listModelPriceVersions(req) {
      const r = await catalogue.listPriceVersions(req.modelName, req.pageSize, req.pageToken);
      return create(ListModelPriceVersionsResponseSchema, { versions: r.versions.map(versionToProto), nextPageToken: r.nextPageToken });
    },
    async listModelConfigHistory(req) {
      const r = await catalogue.listHistory(req.modelName, req.pageSize, req.pageToken);
      return create(ListModelConfigHistoryResponseSchema, { entries: r.entries.map(auditToProto), nextPageToken: r.nextPageToken });
    },
  };
}
