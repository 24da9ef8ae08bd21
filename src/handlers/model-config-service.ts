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
  type ModelConfig,
} from "../../gen/billing/v1/model_config_service_pb.js";
import { type ModelCatalogue, type ModelInput, type ModelRecord, type ModelType, type Provider } from "../domain/models/catalogue.js";
import { principalOf } from "../interceptors/auth.js";
import { auditToProto, calendarDateToProto, enumFromProto, enumToProto, ts, txOptions } from "./convert.js";

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

function inputOf(m: ModelConfig | undefined): ModelInput {
  const c = m ?? create(ModelConfigSchema);
  return {
    modelName: c.modelName,
    displayName: c.displayName,
    modelType: enumFromProto(modelTypes, c.modelType, "model_config.model_type"),
    provider: enumFromProto(providers, c.provider, "model_config.provider"),
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
    provider: enumToProto(providers, r.provider),
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
      return create(GetModelConfigResponseSchema, { modelConfig: modelToProto(await catalogue.get(req.modelName)) });
    },
    async listModelConfigs(req) {
      const r = await catalogue.list({
        modelType: enumFromProto(modelTypes, req.modelType, "model_type"),
        provider: enumFromProto(providers, req.provider, "provider"),
        activeOnly: req.activeOnly,
        pageSize: req.pageSize,
        pageToken: req.pageToken,
      });
      return create(ListModelConfigsResponseSchema, { modelConfigs: r.models.map(modelToProto), nextPageToken: r.nextPageToken });
    },
    async updateModelConfig(req, ctx: HandlerContext) {
      const r = await catalogue.update(inputOf(req.modelConfig), req.updateMask?.paths ?? [], principalOf(ctx).name, txOptions(ctx));
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
      });
      return create(CalculateCostResponseSchema, { costUsd: cost });
    },
    async listModelConfigHistory(req) {
      const r = await catalogue.listHistory(req.modelName, req.pageSize, req.pageToken);
      return create(ListModelConfigHistoryResponseSchema, { entries: r.entries.map(auditToProto), nextPageToken: r.nextPageToken });
    },
  };
}
