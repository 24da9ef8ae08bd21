/**
 * `npm run seed-demo`: loads a small, realistic model catalogue so a newcomer
 * can try the service. Models that already exist are left alone; the tests
 * do not depend on this.
 */
import { loadConfig } from "./config.js";
import { ModelCatalogue, type ModelInput } from "./domain/models/catalogue.js";
import { createLogger } from "./logger.js";
import { openDatabase } from "./db/connect.js";

const base = {
  contextWindow: 0n,
  maxOutputTokens: 0n,
  inputCostPer1m: "",
  outputCostPer1m: "",
  costPerImage: "",
  validSizes: [] as string[],
  supportsJsonMode: false,
  supportsVision: false,
  supportsFunctionCalling: false,
  isActive: true,
  isDefault: false,
  description: "",
  releaseDate: undefined,
  deprecationDate: undefined,
};

/** List prices in USD as published by the providers (per 1M tokens, or per image). */
const DEMO_MODELS: ModelInput[] = [
  { ...base, modelName: "gpt-4o-mini", displayName: "GPT-4o mini - Fast & Affordable", modelType: "text", provider: "openai", inputCostPer1m: "0.1500", outputCostPer1m: "0.6000", contextWindow: 128000n, maxOutputTokens: 16384n, supportsJsonMode: true, supportsVision: true, supportsFunctionCalling: true, isDefault: true, sortOrder: 1, releaseDate: { year: 2024, month: 7, day: 18 } },
  { ...base, modelName: "gpt-4o", displayName: "GPT-4o - High quality", modelType: "text", provider: "openai", inputCostPer1m: "2.5000", outputCostPer1m: "10.0000", contextWindow: 128000n, maxOutputTokens: 16384n, supportsJsonMode: true, supportsVision: true, supportsFunctionCalling: true, sortOrder: 2, releaseDate: { year: 2024, month: 5, day: 13 } },
  { ...base, modelName: "claude-3-5-sonnet-20241022", displayName: "Claude 3.5 Sonnet", modelType: "text", provider: "anthropic", inputCostPer1m: "3.0000", outputCostPer1m: "15.0000", contextWindow: 200000n, maxOutputTokens: 8192n, supportsVision: true, supportsFunctionCalling: true, sortOrder: 3, releaseDate: { year: 2024, month: 10, day: 22 } },
  { ...base, modelName: "dall-e-3", displayName: "DALL-E 3", modelType: "image", provider: "openai", costPerImage: "0.0400", validSizes: ["1024x1024", "1024x1792", "1792x1024"], isDefault: true, sortOrder: 1 },
  { ...base, modelName: "runware:100@1", displayName: "Runware FLUX.1 schnell", modelType: "image", provider: "runware", costPerImage: "0.0013", validSizes: ["512x512", "1024x1024"], sortOrder: 2 },
  { ...base, modelName: "text-embedding-3-small", displayName: "Text Embedding 3 small", modelType: "embedding", provider: "openai", inputCostPer1m: "0.0200", contextWindow: 8191n, isDefault: true, sortOrder: 1 },
];

const config = loadConfig();
const logger = createLogger(config.logLevel);
const db = await openDatabase(config, logger);
const catalogue = new ModelCatalogue(db.sequelize);
let created = 0;
for (const model of DEMO_MODELS) {
  try {
    await catalogue.get(model.modelName);
  } catch {
    await catalogue.create(model, "seed-demo");
    created++;
  }
}
logger.info("demo catalogue loaded", { created, total: DEMO_MODELS.length });
await db.close();
