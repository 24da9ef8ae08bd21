/**
 * The AI model catalogue (ai_model_configs): prices and capabilities of
 * text, image and embedding models, with a history of every change.
 *
 * Rules:
 * - A text model has both per-1M token prices; an image model has a
 *   per-image price; prices are scale-4 decimals >= 0.0001.
 * - At most one default per model type, enforced by a unique partial index;
 *   changes of the default serialise on a per-type advisory lock so racing
 *   SetDefaultModel calls end with exactly one default (the last one wins).
 * - A default model is active: an inactive model cannot become the default,
 *   and the default cannot be deactivated while it is the default.
 * - Costs are exact decimal arithmetic, answered with scale 4, half-up.
 * - Prices are versions (versions.ts, README.md "Price versions"): a read
 *   answers the prices in force at the instant asked (default now). A price
 *   change through UpdateModelConfig is a version in force at once;
 *   ScheduleModelPriceVersion adds one from any instant (the past only with
 *   backdate). The model's type cannot change while a version is scheduled
 *   (the scheduled prices were checked against the type). Models are read
 *   from the database on every call (no cache), so every replica prices an
 *   instant with the same version.
 */
import type { Sequelize, Transaction } from "sequelize";
import { MODEL_CONFIG_HISTORY, hasHistory } from "../../db/catalogue/history.js";
import {
  defaultModelsForUpdate,
  insertModelConfig,
  lockModelType,
  modelConfig,
  modelExists,
  pricedDefaultModel,
  pricedModel,
  pricedModels,
  updateModelConfig,
  type ModelColumns,
  type ModelConfigRow,
  type PricedModelRow,
} from "../../db/catalogue/models.js";
import { MODEL_PRICE_VERSIONS, type ModelPriceColumns, type ModelPriceVersionRow, type TimedVersionRow } from "../../db/catalogue/price-versions.js";
import { inTransaction, type TransactionOptions } from "../../db/transaction.js";
import { Dec, PRICE, formatMoney, formatOptionalMoney, parseMoney } from "../money.js";
import { AuditTrail, type AuditRecord } from "../audit.js";
import { isoDateOf, parseCalendarDate, type CalendarDate } from "../dates.js";
import { BillingError, Reason, Violations, failedPrecondition, invalidField, notFound } from "../errors.js";
import { applyMask } from "../field-mask.js";
import type { JsonObject } from "../json.js";
import { pageOf, pageRequest } from "../pagination.js";
import { MAX_TEXT, checkText, requireId } from "../validation.js";
import { PriceTimeline, effectiveFromOf, versionAuditTimes, versionTimes, type VersionTimes } from "./versions.js";

export type ModelType = "text" | "image" | "embedding";
/**
 * A provider's name: lowercase letters, digits, "-" and "_"; the handler
 * maps the ones with a proto enum value of their own.
 */
export type Provider = string;
export const PROVIDER_NAME_RE = /^[a-z][a-z0-9_-]{0,49}$/;

/** A model as stored. Prices are scale-4 decimal strings, "" when unset. */
export interface ModelRecord {
  modelName: string;
  displayName: string;
  modelType: ModelType;
  provider: Provider;
  inputCostPer1m: string;
  outputCostPer1m: string;
  contextWindow: number;
  maxOutputTokens: number;
  costPerImage: string;
  validSizes: string[];
  supportsJsonMode: boolean;
  supportsVision: boolean;
  supportsFunctionCalling: boolean;
  isActive: boolean;
  isDefault: boolean;
  sortOrder: number;
  description: string;
  releaseDate: string;
  deprecationDate: string;
  updatedBy: string;
  createdAt: Date;
  updatedAt: Date;
  /** The price version whose prices these are; "" when none was in force. */
  priceVersionId: string;
  priceEffectiveFrom?: Date;
}

/** A model as given by a caller: the stored fields, with optional enums, int64 limits and calendar dates. */
export type ModelInput = Omit<
  ModelRecord,
  "modelType" | "provider" | "contextWindow" | "maxOutputTokens" | "releaseDate" | "deprecationDate" | "updatedBy" | "createdAt" | "updatedAt" | "priceVersionId" | "priceEffectiveFrom"
> & {
  modelType: ModelType | undefined;
  provider: Provider | undefined;
  contextWindow: bigint;
  maxOutputTokens: bigint;
  releaseDate: CalendarDate | undefined;
  deprecationDate: CalendarDate | undefined;
};

/** Fields an update mask may name. */
const UPDATABLE_FIELDS = [
  "display_name",
  "model_type",
  "provider",
  "input_cost_per_1m",
  "output_cost_per_1m",
  "context_window",
  "max_output_tokens",
  "cost_per_image",
  "valid_sizes",
  "supports_json_mode",
  "supports_vision",
  "supports_function_calling",
  "is_active",
  "is_default",
  "sort_order",
  "description",
  "release_date",
  "deprecation_date",
] as const;
type UpdatableField = (typeof UPDATABLE_FIELDS)[number];

const INPUT_KEY: Record<UpdatableField, keyof ModelInput> = {
  display_name: "displayName",
  model_type: "modelType",
  provider: "provider",
  input_cost_per_1m: "inputCostPer1m",
  output_cost_per_1m: "outputCostPer1m",
  context_window: "contextWindow",
  max_output_tokens: "maxOutputTokens",
  cost_per_image: "costPerImage",
  valid_sizes: "validSizes",
  supports_json_mode: "supportsJsonMode",
  supports_vision: "supportsVision",
  supports_function_calling: "supportsFunctionCalling",
  is_active: "isActive",
  is_default: "isDefault",
  sort_order: "sortOrder",
  description: "description",
  release_date: "releaseDate",
  deprecation_date: "deprecationDate",
};

export interface ListModelsInput {
  modelType?: ModelType;
  provider?: Provider;
  activeOnly: boolean;
  pageSize: number;
  pageToken: string;
}

export interface CostInput {
  modelName: string;
  tokensInput: bigint;
  tokensOutput: bigint;
  imageCount: bigint;
  size: string;
  /** The instant whose prices apply; undefined for now. */
  at?: Date;
}

/** One version of a model's prices. */
export interface ModelPriceVersionView extends VersionTimes {
  modelName: string;
  inputCostPer1m: string;
  outputCostPer1m: string;
  costPerImage: string;
}

/** A price version to add. */
export interface SchedulePriceInput {
  modelName: string;
  inputCostPer1m: string;
  outputCostPer1m: string;
  costPerImage: string;
  /** Undefined for now. */
  effectiveFrom: Date | undefined;
  backdate: boolean;
}

/** The prices of a version, as stored. */
type PriceColumns = ModelPriceColumns;

const INT32_MAX = 2_147_483_647n;
const SIZE_RE = /^[1-9]\d{0,4}x[1-9]\d{0,4}$/;
const MODEL_NAME_RE = /^[^\s\u0000-\u001f\u007f]+$/;

/** Column values of a validated model. */
type ModelRow = Omit<ModelRecord, "updatedBy" | "createdAt" | "updatedAt" | "priceVersionId" | "priceEffectiveFrom">;

/** The model catalogue service. */
export class ModelCatalogue {
  private readonly history: AuditTrail;
  private readonly prices: PriceTimeline<ModelPriceVersionRow, ModelPriceVersionView>;

  constructor(private readonly sequelize: Sequelize) {
    this.history = new AuditTrail(sequelize, MODEL_CONFIG_HISTORY);
    this.prices = new PriceTimeline(sequelize, MODEL_PRICE_VERSIONS, {
      what: "model price version",
      history: this.history,
      actions: { schedule: "schedule_price", backdate: "backdate_price", cancel: "cancel_price" },
      audit: versionAudit,
      view: versionView,
    });
  }

  /** Adds a model, its prices a first version in force now; with is_default it becomes its type's only default. */
  async create(input: ModelInput, actor: string, options: TransactionOptions = {}): Promise<ModelRecord> {
    const row = validateModel(input);
    const now = new Date();
    return inTransaction(
      this.sequelize,
      async (t) => {
        if (row.isDefault) await this.clearDefault(t, row.modelType);
        if (await modelConfig(this.sequelize, row.modelName, t)) {
          throw new BillingError("already_exists", Reason.AlreadyExists, `model ${JSON.stringify(row.modelName)} already exists`, [], { model_name: row.modelName });
        }
        const created = await insertModelConfig(this.sequelize, t, toColumns(row), actor);
        const version = await this.prices.add(t, row.modelName, priceColumnsOf(row), now, false, actor);
        const record = fromColumns(created, version);
        await this.history.record(t, record.modelName, "create", actor, null, auditView(record));
        return record;
      },
      options,
    );
  }

  /**
   * One model by name with the prices in force at `at` (default now), or
   * NOT_FOUND. With `knownAt`, only versions added by then count (a
   * reservation's price lock: a later backdated version does not apply).
   */
  async get(modelName: string, at?: Date, knownAt?: Date): Promise<ModelRecord> {
    requireId(modelName, "model_name");
    const row = await pricedModel(this.sequelize, modelName, at ?? new Date(), knownAt);
    if (!row) throw notFound("model", modelName);
    return fromPriced(row);
  }

  /** Models ordered by type, sort order and name, keyset-paginated, with the prices in force now. */
  async list(input: ListModelsInput): Promise<{ models: ModelRecord[]; nextPageToken: string }> {
    const filters = { t: input.modelType ?? "", p: input.provider ?? "", a: input.activeOnly };
    const { size, after } = pageRequest(input, "models", filters, ["string", "number", "string"]);
    const rows = await pricedModels(
      this.sequelize,
      { modelType: input.modelType, provider: input.provider, activeOnly: input.activeOnly, after: after as [string, number, string] | undefined },
      new Date(),
      size + 1,
    );
    const page = pageOf(rows.map(fromPriced), size, (m) => [m.modelType, m.sortOrder, m.modelName], "models", filters);
    return { models: page.items, nextPageToken: page.nextPageToken };
  }

  /**
   * Changes the fields named by `paths` (proto field names); an empty mask
   * means every field the caller set to a non-default value (AIP-134), and
   * may name none. Changed prices are a new version in force now.
   */
  async update(input: ModelInput, paths: string[], actor: string, options: TransactionOptions = {}): Promise<ModelRecord> {
    requireId(input.modelName, "model_config.model_name");
    const populated = Object.fromEntries(UPDATABLE_FIELDS.map((f) => [f, input[INPUT_KEY[f]]])) as Record<UpdatableField, unknown>;
    const fields = applyMask(paths, "model_config", UPDATABLE_FIELDS, populated, { allowEmpty: true });
    const now = new Date();
    return inTransaction(
      this.sequelize,
      async (t) => {
        const current = await this.lockForChange(t, input.modelName);
        const price = await this.prices.inForceAt(t, input.modelName, now);
        const before = fromColumns(current, price);
        const merged: ModelInput = { ...inputOf(before) };
        for (const f of fields) (merged as unknown as Record<string, unknown>)[INPUT_KEY[f]] = input[INPUT_KEY[f]];
        if (before.isDefault && merged.isDefault && !merged.isActive && !fields.includes("is_default")) {
          throw failedPrecondition(Reason.ModelIsDefault, `model ${JSON.stringify(before.modelName)} is the default ${before.modelType} model: make another model the default before deactivating it`);
        }
        const row = validateModel(merged);
        if (row.modelType !== before.modelType && (await this.prices.hasScheduled(t, before.modelName, now))) {
          throw invalidField("model_config.model_type", "cannot change while price versions are scheduled (they were checked against the type): cancel them first");
        }
        if (row.isDefault && (!before.isDefault || row.modelType !== before.modelType)) await this.clearDefault(t, row.modelType, before.modelName);
        const updated = await updateModelConfig(this.sequelize, t, row.modelName, toColumns(row), actor);
        const prices = priceColumnsOf(row);
        const changed = !price || prices.input_cost_per_1m !== price.input_cost_per_1m || prices.output_cost_per_1m !== price.output_cost_per_1m || prices.cost_per_image !== price.cost_per_image;
        const version = changed ? await this.prices.add(t, row.modelName, prices, now, false, actor, "model_config") : price;
        const after = fromColumns(updated, version);
        await this.history.record(t, after.modelName, "update", actor, auditView(before), auditView(after));
        return after;
      },
      options,
    );
  }

  /** Makes an active model the only default of its type. */
  async setDefault(modelName: string, actor: string, options: TransactionOptions = {}): Promise<ModelRecord> {
    requireId(modelName, "model_name");
    const now = new Date();
    return inTransaction(
      this.sequelize,
      async (t) => {
        const probe = await modelConfig(this.sequelize, modelName, t);
        if (!probe) throw notFound("model", modelName);
        await lockModelType(this.sequelize, t, probe.model_type);
        const current = await this.lockForChange(t, modelName);
        const price = await this.prices.inForceAt(t, modelName, now);
        const before = fromColumns(current, price);
        if (!before.isActive) throw failedPrecondition(Reason.ModelInactive, `model ${JSON.stringify(modelName)} is inactive and cannot be the default`);
        if (before.isDefault) return before;
        await this.clearDefault(t, before.modelType, modelName);
        const after = fromColumns(await updateModelConfig(this.sequelize, t, modelName, { is_default: true }, actor), price);
        await this.history.record(t, modelName, "set_default", actor, auditView(before), auditView(after));
        return after;
      },
      options,
    );
  }

  /** The default model of a type (prices in force now), or NOT_FOUND. */
  async getDefault(modelType: ModelType | undefined): Promise<ModelRecord> {
    if (!modelType) throw invalidField("model_type", "is required");
    const row = await pricedDefaultModel(this.sequelize, modelType, new Date());
    if (!row) throw notFound("default model of type", modelType);
    return fromPriced(row);
  }

  /** USD cost of a usage at the prices in force at `input.at` (default now), scale 4, rounded half-up, and the version used. */
  async calculateCost(input: CostInput): Promise<{ costUsd: string; priceVersionId: string }> {
    const v = new Violations();
    v.collect(() => requireId(input.modelName, "model_name"));
    if (input.tokensInput < 0n) v.add("tokens_input", "must not be negative");
    if (input.tokensOutput < 0n) v.add("tokens_output", "must not be negative");
    if (input.imageCount < 0n) v.add("image_count", "must not be negative");
    v.collect(() => checkText(input.size, "size"));
    v.throwIfAny();
    const model = await this.get(input.modelName, input.at);
    return { costUsd: costOf(model, input), priceVersionId: model.priceVersionId };
  }

  /** Pages through a model's changes (price versions included), newest first. */
  async listHistory(modelName: string, requestedPageSize: number, pageToken: string): Promise<{ entries: AuditRecord[]; nextPageToken: string }> {
    requireId(modelName, "model_name");
    await this.requireKnown(modelName);
    return this.history.list(modelName, requestedPageSize, pageToken);
  }

  /**
   * Admin: adds a version of a model's prices in force from
   * `effectiveFrom` (default now; the past only with backdate), kept in
   * history as "schedule_price" or "backdate_price" with the version it
   * takes over from.
   */
  async schedulePriceVersion(input: SchedulePriceInput, actor: string, options: TransactionOptions = {}): Promise<ModelPriceVersionView> {
    const now = new Date();
    const v = new Violations();
    v.collect(() => requireId(input.modelName, "model_name"));
    const price = (value: string, name: string) => (value === "" ? null : parsePrice(v, value, name) ?? null);
    const prices: PriceColumns = {
      input_cost_per_1m: price(input.inputCostPer1m, "input_cost_per_1m"),
      output_cost_per_1m: price(input.outputCostPer1m, "output_cost_per_1m"),
      cost_per_image: price(input.costPerImage, "cost_per_image"),
    };
    const when = effectiveFromOf(v, input.effectiveFrom, input.backdate, now);
    v.throwIfAny();
    return this.prices.schedule(input.modelName, prices, when, actor, now, options, async (t) => {
      const model = await this.lockForChange(t, input.modelName);
      checkPricesFit(model.model_type as ModelType, input, "");
    });
  }

  /** Admin: cancels a price version not yet in force (kept in history as "cancel_price"); a cancelled one is answered as it is. */
  cancelPriceVersion(versionId: string, actor: string, options: TransactionOptions = {}): Promise<ModelPriceVersionView> {
    return this.prices.cancel(versionId, actor, options);
  }

  /** Pages through a model's price versions, latest effective_from first (cancelled ones too). */
  listPriceVersions(modelName: string, requestedPageSize: number, pageToken: string): Promise<{ versions: ModelPriceVersionView[]; nextPageToken: string }> {
    const v = new Violations();
    v.collect(() => requireId(modelName, "model_name"));
    return this.prices.list(v, modelName, { pageSize: requestedPageSize, pageToken }, () => this.requireKnown(modelName));
  }

  /** NOT_FOUND unless the model exists or once did (it has history). */
  private async requireKnown(modelName: string): Promise<void> {
    if (!(await modelExists(this.sequelize, modelName)) && !(await hasHistory(this.sequelize, MODEL_CONFIG_HISTORY, modelName))) throw notFound("model", modelName);
  }

  private async lockForChange(t: Transaction, modelName: string): Promise<ModelConfigRow> {
    const row = await modelConfig(this.sequelize, modelName, t, true);
    if (!row) throw notFound("model", modelName);
    return row;
  }

  /** Unsets the current default of `modelType` (other than `except`), with history; changes serialise per type. */
  private async clearDefault(t: Transaction, modelType: ModelType, except = ""): Promise<void> {
    await lockModelType(this.sequelize, t, modelType);
    const previous = await defaultModelsForUpdate(this.sequelize, t, modelType);
    const now = new Date();
    for (const row of previous) {
      if (row.model_name === except) continue;
      const price = await this.prices.inForceAt(t, row.model_name, now);
      const before = fromColumns(row, price);
      const after = fromColumns(await updateModelConfig(this.sequelize, t, row.model_name, { is_default: false }), price);
      await this.history.record(t, row.model_name, "unset_default", "system", auditView(before), auditView(after));
    }
  }
}

/** INVALID_ARGUMENT unless the prices given are those a model of `modelType` takes (fields prefixed by `prefix`). */
function checkPricesFit(modelType: ModelType, p: { inputCostPer1m: string; outputCostPer1m: string; costPerImage: string }, prefix: string): void {
  const v = new Violations();
  const f = (name: string) => `${prefix}${name}`;
  if (modelType === "image") {
    if (p.costPerImage === "") v.add(f("cost_per_image"), "is required for image models");
    if (p.inputCostPer1m !== "") v.add(f("input_cost_per_1m"), "applies to text and embedding models only");
    if (p.outputCostPer1m !== "") v.add(f("output_cost_per_1m"), "applies to text and embedding models only");
  } else {
    if (p.inputCostPer1m === "") v.add(f("input_cost_per_1m"), `is required for ${modelType} models`);
    if (modelType === "text" && p.outputCostPer1m === "") v.add(f("output_cost_per_1m"), "is required for text models");
    if (p.costPerImage !== "") v.add(f("cost_per_image"), "applies to image models only");
  }
  v.throwIfAny();
}

/** A price version as callers see it at `now`. */
function versionView(r: TimedVersionRow<ModelPriceVersionRow>, now: Date): ModelPriceVersionView {
  return {
    ...versionTimes(r, r.next_from ?? undefined, now),
    modelName: r.model_name,
    inputCostPer1m: formatOptionalMoney(r.input_cost_per_1m, PRICE),
    outputCostPer1m: formatOptionalMoney(r.output_cost_per_1m, PRICE),
    costPerImage: formatOptionalMoney(r.cost_per_image, PRICE),
  };
}

/** A price of at least 0.0001 at scale 4 (undefined when bad, reported in `v`). */
function parsePrice(v: Violations, value: string, field: string): string | undefined {
  const price = v.collect(() => parseMoney(value, field, PRICE, { min: "0.0001" }));
  return price && formatMoney(price, PRICE);
}

function priceColumnsOf(r: ModelRow): PriceColumns {
  return { input_cost_per_1m: r.inputCostPer1m || null, output_cost_per_1m: r.outputCostPer1m || null, cost_per_image: r.costPerImage || null };
}

/** A price version as history keeps it. */
function versionAudit(r: ModelPriceVersionRow): JsonObject {
  return {
    ...versionAuditTimes(r),
    model_name: r.model_name,
    input_cost_per_1m: formatOptionalMoney(r.input_cost_per_1m, PRICE),
    output_cost_per_1m: formatOptionalMoney(r.output_cost_per_1m, PRICE),
    cost_per_image: formatOptionalMoney(r.cost_per_image, PRICE),
  };
}

/** The cost of `usage` on `model`, or the precondition it fails. */
export function costOf(model: ModelRecord, usage: Omit<CostInput, "modelName">): string {
  const name = JSON.stringify(model.modelName);
  const tokens = usage.tokensInput > 0n || usage.tokensOutput > 0n;
  if (model.modelType === "image") {
    if (tokens) throw failedPrecondition(Reason.WrongModelType, `model ${name} is an image model: it is priced per image, not per token`);
    if (!model.costPerImage) throw failedPrecondition(Reason.PriceMissing, `model ${name} has no cost_per_image`);
    if (usage.size && model.validSizes.length > 0 && !model.validSizes.includes(usage.size)) {
      throw invalidField("size", `${JSON.stringify(usage.size)} is not a valid size of ${name}; valid: ${model.validSizes.join(", ")}`);
    }
    return formatMoney(new Dec(model.costPerImage).times(usage.imageCount.toString()), PRICE);
  }
  if (usage.imageCount > 0n) throw failedPrecondition(Reason.WrongModelType, `model ${name} is a ${model.modelType} model: it is priced per token, not per image`);
  if (usage.size) throw invalidField("size", `applies to image models only; ${name} is a ${model.modelType} model`);
  if (!model.inputCostPer1m || (!model.outputCostPer1m && (model.modelType === "text" || usage.tokensOutput > 0n))) {
    throw failedPrecondition(Reason.PriceMissing, `model ${name} is missing a per-1M token price`);
  }
  const cost = new Dec(usage.tokensInput.toString())
    .times(model.inputCostPer1m)
    .plus(new Dec(usage.tokensOutput.toString()).times(model.outputCostPer1m || "0"))
    .dividedBy(1_000_000);
  return formatMoney(cost, PRICE);
}

/** Validates a whole model, reporting every bad field under `model_config.`. */
function validateModel(input: ModelInput): ModelRow {
  const f = (name: string) => `model_config.${name}`;
  const v = new Violations();
  v.collect(() => requireId(input.modelName, f("model_name")));
  if (input.modelName && !MODEL_NAME_RE.test(input.modelName)) v.add(f("model_name"), "must not contain spaces or control characters");
  if (input.displayName === "") v.add(f("display_name"), "is required");
  else v.collect(() => checkText(input.displayName, f("display_name")));
  if (!input.modelType) v.add(f("model_type"), "is required (TEXT, IMAGE or EMBEDDING)");
  if (!input.provider) v.add(f("provider"), "is required (OPENAI, ANTHROPIC, RUNWARE, GOOGLE, or OTHER with provider_name)");
  else if (!PROVIDER_NAME_RE.test(input.provider)) v.add(f("provider_name"), "must be lowercase letters, digits, - and _ (at most 50), starting with a letter");
  const price = (value: string, name: string) => (value === "" ? "" : parsePrice(v, value, f(name)) ?? "");
  const inputCost = price(input.inputCostPer1m, "input_cost_per_1m");
  const outputCost = price(input.outputCostPer1m, "output_cost_per_1m");
  const imageCost = price(input.costPerImage, "cost_per_image");
  if (input.modelType === "text") {
    if (input.inputCostPer1m === "") v.add(f("input_cost_per_1m"), "is required for text models");
    if (input.outputCostPer1m === "") v.add(f("output_cost_per_1m"), "is required for text models");
  }
  if (input.modelType === "image") {
    if (input.costPerImage === "") v.add(f("cost_per_image"), "is required for image models");
    if (input.inputCostPer1m !== "") v.add(f("input_cost_per_1m"), "applies to text and embedding models only");
    if (input.outputCostPer1m !== "") v.add(f("output_cost_per_1m"), "applies to text and embedding models only");
  } else if (input.modelType) {
    if (input.costPerImage !== "") v.add(f("cost_per_image"), "applies to image models only");
    if (input.validSizes.length > 0) v.add(f("valid_sizes"), "apply to image models only");
  }
  for (const [key, value] of [["context_window", input.contextWindow], ["max_output_tokens", input.maxOutputTokens]] as const) {
    if (value < 0n || value > INT32_MAX) v.add(f(key), `must be between 0 (unknown) and ${INT32_MAX}`);
  }
  const seen = new Set<string>();
  input.validSizes.forEach((s, i) => {
    if (!SIZE_RE.test(s)) v.add(f(`valid_sizes[${i}]`), `must look like "1024x1024", got ${JSON.stringify(s.slice(0, 40))}`);
    else if (seen.has(s)) v.add(f(`valid_sizes[${i}]`), "is listed twice");
    seen.add(s);
  });
  v.collect(() => checkText(input.description, f("description"), MAX_TEXT));
  const releaseDate = v.collect(() => parseCalendarDate(input.releaseDate, f("release_date")));
  const deprecationDate = v.collect(() => parseCalendarDate(input.deprecationDate, f("deprecation_date")));
  if (input.isDefault && !input.isActive) v.add(f("is_default"), "an inactive model cannot be the default");
  v.throwIfAny();
  return {
    modelName: input.modelName,
    displayName: input.displayName,
    modelType: input.modelType!,
    provider: input.provider!,
    inputCostPer1m: inputCost,
    outputCostPer1m: outputCost,
    contextWindow: Number(input.contextWindow),
    maxOutputTokens: Number(input.maxOutputTokens),
    costPerImage: imageCost,
    validSizes: input.validSizes,
    supportsJsonMode: input.supportsJsonMode,
    supportsVision: input.supportsVision,
    supportsFunctionCalling: input.supportsFunctionCalling,
    isActive: input.isActive,
    isDefault: input.isDefault,
    sortOrder: input.sortOrder,
    description: input.description,
    releaseDate: releaseDate ?? "",
    deprecationDate: deprecationDate ?? "",
  };
}

function toColumns(r: ModelRow): ModelColumns {
  return {
    model_name: r.modelName,
    display_name: r.displayName,
    model_type: r.modelType,
    provider: r.provider,
    context_window: r.contextWindow || null,
    max_output_tokens: r.maxOutputTokens || null,
    valid_sizes: r.modelType === "image" ? r.validSizes : null,
    supports_json_mode: r.supportsJsonMode,
    supports_vision: r.supportsVision,
    supports_function_calling: r.supportsFunctionCalling,
    is_active: r.isActive,
    is_default: r.isDefault,
    sort_order: r.sortOrder,
    description: r.description,
    release_date: r.releaseDate || null,
    deprecation_date: r.deprecationDate || null,
  };
}

/** A model with the prices in force at the instant its row was read for. */
function fromPriced(r: PricedModelRow): ModelRecord {
  return fromColumns(r, r.price_version_id === null ? undefined : { ...r, id: r.price_version_id, effective_from: r.price_effective_from! });
}

/** A model from its row and the price version in force (none: no prices). */
function fromColumns(m: ModelConfigRow, version: (PriceColumns & { id: string; effective_from: Date }) | undefined): ModelRecord {
  const record: ModelRecord = {
    modelName: m.model_name,
    displayName: m.display_name,
    modelType: m.model_type as ModelType,
    provider: m.provider as Provider,
    inputCostPer1m: formatOptionalMoney(version?.input_cost_per_1m ?? null, PRICE),
    outputCostPer1m: formatOptionalMoney(version?.output_cost_per_1m ?? null, PRICE),
    contextWindow: m.context_window ?? 0,
    maxOutputTokens: m.max_output_tokens ?? 0,
    costPerImage: formatOptionalMoney(version?.cost_per_image ?? null, PRICE),
    validSizes: m.valid_sizes ?? [],
    supportsJsonMode: m.supports_json_mode,
    supportsVision: m.supports_vision,
    supportsFunctionCalling: m.supports_function_calling,
    isActive: m.is_active,
    isDefault: m.is_default,
    sortOrder: m.sort_order,
    description: m.description,
    releaseDate: isoDateOf(m.release_date),
    deprecationDate: isoDateOf(m.deprecation_date),
    updatedBy: m.updated_by ?? "",
    createdAt: m.created_at,
    updatedAt: m.updated_at,
    priceVersionId: version ? String(version.id) : "",
  };
  if (version) record.priceEffectiveFrom = version.effective_from;
  return record;
}

function inputOf(record: ModelRecord): ModelInput {
  const date = (s: string) => (s ? { year: Number(s.slice(0, 4)), month: Number(s.slice(5, 7)), day: Number(s.slice(8, 10)) } : undefined);
  const { priceVersionId: _id, priceEffectiveFrom: _from, ...r } = record;
  return {
    ...r,
    contextWindow: BigInt(r.contextWindow),
    maxOutputTokens: BigInt(r.maxOutputTokens),
    releaseDate: date(r.releaseDate),
    deprecationDate: date(r.deprecationDate),
  };
}

/** The record as history keeps it: proto field names, wire values. */
function auditView(r: ModelRecord): JsonObject {
  return {
    model_name: r.modelName,
    display_name: r.displayName,
    model_type: r.modelType,
    provider: r.provider,
    input_cost_per_1m: r.inputCostPer1m,
    output_cost_per_1m: r.outputCostPer1m,
    context_window: r.contextWindow,
    max_output_tokens: r.maxOutputTokens,
    cost_per_image: r.costPerImage,
    valid_sizes: r.validSizes,
    supports_json_mode: r.supportsJsonMode,
    supports_vision: r.supportsVision,
    supports_function_calling: r.supportsFunctionCalling,
    is_active: r.isActive,
    is_default: r.isDefault,
    sort_order: r.sortOrder,
    description: r.description,
    release_date: r.releaseDate,
    deprecation_date: r.deprecationDate,
    price_version_id: r.priceVersionId,
    price_effective_from: r.priceEffectiveFrom?.toISOString() ?? "",
  };
}
