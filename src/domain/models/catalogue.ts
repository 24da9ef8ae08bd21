/**
 * The AI model catalogue (seed: AIModelConfig): prices and capabilities of
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
import { QueryTypes, type Sequelize, type Transaction } from "sequelize";
import { modelsOf, type AIModelConfig } from "../../db/models/index.js";
import { inTransaction, type TransactionOptions } from "../../db/transaction.js";
import { Dec, PRICE, formatMoney, formatOptionalMoney, parseMoney } from "../../money.js";
import { AuditTrail, type AuditRecord, type JsonObject } from "../audit.js";
import { isoDateOf, parseCalendarDate, type CalendarDate } from "../dates.js";
import { BillingError, Reason, Violations, failedPrecondition, invalidField, notFound } from "../errors.js";
import { maskField } from "../field-mask.js";
import { decodePageToken, pageOf, pageSize } from "../pagination.js";
import { MAX_TEXT, checkText, requireId } from "../validation.js";
import { effectiveFromOf, notCancellable, requireVersionId, uniqueInstant, versionAuditTimes, versionTimes, type VersionRow, type VersionTimes } from "./versions.js";

export const MODEL_TYPES = ["text", "image", "embedding"] as const;
export type ModelType = (typeof MODEL_TYPES)[number];
/** Providers with a value of their own in the proto enum; any other is named (PROVIDER_OTHER + provider_name). */
export const PROVIDERS = ["openai", "anthropic", "runware", "google"] as const;
/** A provider's name: lowercase letters, digits, "-" and "_". */
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
export const UPDATABLE_FIELDS = [
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
interface PriceColumns {
  input_cost_per_1m: string | null;
  output_cost_per_1m: string | null;
  cost_per_image: string | null;
}

type PriceVersionRow = VersionRow & PriceColumns & { model_name: string; next_from?: Date | null };

/** A model's columns with the prices in force at an instant (price_* null when none was). */
type PricedRow = Record<string, unknown> & PriceColumns & { price_version_id: string | null; price_effective_from: Date | null };

/**
 * Models with the price version in force at $1 (not cancelled, latest
 * effective_from at or before it), among the versions added by $2 (null: all).
 */
const PRICED_MODELS = `SELECT m.*, v.id AS price_version_id, v.effective_from AS price_effective_from,
    v.input_cost_per_1m, v.output_cost_per_1m, v.cost_per_image
  FROM ai_model_configs m LEFT JOIN LATERAL (
    SELECT * FROM model_price_versions v
    WHERE v.model_name = m.model_name AND v.cancelled_at IS NULL AND v.effective_from <= $1 AND ($2::timestamptz IS NULL OR v.created_at <= $2)
    ORDER BY v.effective_from DESC LIMIT 1) v ON true`;

/** Price versions with the start of the next live one (their effective_until). */
const PRICE_VERSIONS = `SELECT v.*, (SELECT min(n.effective_from) FROM model_price_versions n
    WHERE n.model_name = v.model_name AND n.cancelled_at IS NULL AND n.effective_from > v.effective_from) AS next_from
  FROM model_price_versions v`;

const INT32_MAX = 2_147_483_647n;
const SIZE_RE = /^[1-9]\d{0,4}x[1-9]\d{0,4}$/;
const MODEL_NAME_RE = /^[^\s\u0000-\u001f\u007f]+$/;

/** Column values of a validated model. */
type ModelRow = Omit<ModelRecord, "updatedBy" | "createdAt" | "updatedAt" | "priceVersionId" | "priceEffectiveFrom">;

/** The model catalogue service. */
export class ModelCatalogue {
  readonly history: AuditTrail;
  private readonly models: typeof AIModelConfig;

  constructor(private readonly sequelize: Sequelize) {
    this.history = new AuditTrail(sequelize, "ai_model_config_history", "model_name");
    this.models = modelsOf(sequelize).AIModelConfig;
  }

  /** Adds a model, its prices a first version in force now; with is_default it becomes its type's only default. */
  async create(input: ModelInput, actor: string, options: TransactionOptions = {}): Promise<ModelRecord> {
    const row = validateModel(input);
    const now = new Date();
    return inTransaction(
      this.sequelize,
      async (t) => {
        if (row.isDefault) await this.clearDefault(t, row.modelType);
        const existing = await this.models.findByPk(row.modelName, { transaction: t });
        if (existing) {
          throw new BillingError("already_exists", Reason.AlreadyExists, `model ${JSON.stringify(row.modelName)} already exists`, [], { model_name: row.modelName });
        }
        const created = await this.models.create({ ...toColumns(row), updated_by: actor }, { transaction: t });
        const version = await this.insertVersion(t, row.modelName, priceColumnsOf(row), now, false, actor);
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
    const [row] = await this.sequelize.query<PricedRow>(`${PRICED_MODELS} WHERE m.model_name = $3`, {
      bind: [(at ?? new Date()).toISOString(), knownAt?.toISOString() ?? null, modelName],
      type: QueryTypes.SELECT,
    });
    if (!row) throw notFound("model", modelName);
    return this.fromPriced(row);
  }

  /** Models ordered by type, sort order and name (the seed's ordering), keyset-paginated, with the prices in force now. */
  async list(input: ListModelsInput): Promise<{ models: ModelRecord[]; nextPageToken: string }> {
    const size = pageSize(input.pageSize);
    const filters = { t: input.modelType ?? "", p: input.provider ?? "", a: input.activeOnly };
    const after = decodePageToken(input.pageToken, "models", filters);
    const where: string[] = [];
    const bind: unknown[] = [new Date().toISOString(), null];
    if (input.modelType) where.push(`m.model_type = $${bind.push(input.modelType)}`);
    if (input.provider) where.push(`m.provider = $${bind.push(input.provider)}`);
    if (input.activeOnly) where.push("m.is_active");
    if (after) {
      const [type, order, name] = after;
      if (typeof type !== "string" || typeof order !== "number" || typeof name !== "string") throw invalidField("page_token", "is not a valid page token for this request");
      where.push(`(m.model_type, m.sort_order, m.model_name) > ($${bind.push(type)}, $${bind.push(order)}, $${bind.push(name)})`);
    }
    const rows = await this.sequelize.query<PricedRow>(
      `${PRICED_MODELS} ${where.length ? "WHERE " + where.join(" AND ") : ""}
       ORDER BY m.model_type, m.sort_order, m.model_name LIMIT $${bind.push(size + 1)}`,
      { bind, type: QueryTypes.SELECT },
    );
    const models = rows.map((r) => this.fromPriced(r));
    const page = pageOf(models, size, (m) => [m.modelType, m.sortOrder, m.modelName], "models", filters);
    return { models: page.items, nextPageToken: page.nextPageToken };
  }

  /**
   * Changes the fields named by `paths` (proto field names); an empty mask
   * means every field the caller set to a non-default value (AIP-134).
   * Changed prices are a new version in force now.
   */
  async update(input: ModelInput, paths: string[], actor: string, options: TransactionOptions = {}): Promise<ModelRecord> {
    requireId(input.modelName, "model_config.model_name");
    const fields = resolveMask(paths, input);
    const now = new Date();
    return inTransaction(
      this.sequelize,
      async (t) => {
        const current = await this.lockForChange(t, input.modelName);
        const price = await this.versionAt(t, input.modelName, now);
        const before = fromColumns(current, price);
        const merged: ModelInput = { ...inputOf(before) };
        for (const f of fields) (merged as unknown as Record<string, unknown>)[INPUT_KEY[f]] = input[INPUT_KEY[f]];
        if (before.isDefault && merged.isDefault && !merged.isActive && !fields.includes("is_default")) {
          throw failedPrecondition(Reason.ModelIsDefault, `model ${JSON.stringify(before.modelName)} is the default ${before.modelType} model: make another model the default before deactivating it`);
        }
        const row = validateModel(merged);
        if (row.modelType !== before.modelType && (await this.hasScheduled(t, before.modelName, now))) {
          throw invalidField("model_config.model_type", "cannot change while price versions are scheduled (they were checked against the type): cancel them first");
        }
        if (row.isDefault && (!before.isDefault || row.modelType !== before.modelType)) await this.clearDefault(t, row.modelType, before.modelName);
        await current.update({ ...toColumns(row), updated_by: actor, updated_at: new Date() }, { transaction: t });
        const prices = priceColumnsOf(row);
        const changed = !price || prices.input_cost_per_1m !== price.input_cost_per_1m || prices.output_cost_per_1m !== price.output_cost_per_1m || prices.cost_per_image !== price.cost_per_image;
        const version = changed ? await uniqueInstant("model_config", () => this.insertVersion(t, row.modelName, prices, now, false, actor)) : price;
        const after = fromColumns(current, version);
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
        const probe = await this.models.findByPk(modelName, { transaction: t });
        if (!probe) throw notFound("model", modelName);
        await this.lockType(t, probe.model_type as ModelType);
        const current = await this.lockForChange(t, modelName);
        const price = await this.versionAt(t, modelName, now);
        const before = fromColumns(current, price);
        if (!before.isActive) throw failedPrecondition(Reason.ModelInactive, `model ${JSON.stringify(modelName)} is inactive and cannot be the default`);
        if (before.isDefault) return before;
        await this.clearDefault(t, before.modelType, modelName);
        await current.update({ is_default: true, updated_by: actor, updated_at: new Date() }, { transaction: t });
        const after = fromColumns(current, price);
        await this.history.record(t, modelName, "set_default", actor, auditView(before), auditView(after));
        return after;
      },
      options,
    );
  }

  /** The default model of a type (prices in force now), or NOT_FOUND. */
  async getDefault(modelType: ModelType | undefined): Promise<ModelRecord> {
    if (!modelType) throw invalidField("model_type", "is required");
    const [row] = await this.sequelize.query<PricedRow>(`${PRICED_MODELS} WHERE m.model_type = $3 AND m.is_default`, {
      bind: [new Date().toISOString(), null, modelType],
      type: QueryTypes.SELECT,
    });
    if (!row) throw notFound("default model of type", modelType);
    return this.fromPriced(row);
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
    const price = (value: string, name: string) => (value === "" ? null : (v.collect(() => parseMoney(value, name, PRICE, { min: "0.0001" }))?.toFixed(4) ?? null));
    const prices: PriceColumns = {
      input_cost_per_1m: price(input.inputCostPer1m, "input_cost_per_1m"),
      output_cost_per_1m: price(input.outputCostPer1m, "output_cost_per_1m"),
      cost_per_image: price(input.costPerImage, "cost_per_image"),
    };
    const { effectiveFrom, backdated } = effectiveFromOf(v, input.effectiveFrom, input.backdate, now);
    v.throwIfAny();
    return inTransaction(
      this.sequelize,
      async (t) => {
        const model = await this.lockForChange(t, input.modelName);
        checkPricesFit(model.model_type as ModelType, input, "");
        const replaced = await this.versionAt(t, input.modelName, effectiveFrom);
        const added = await uniqueInstant("effective_from", () => this.insertVersion(t, input.modelName, prices, effectiveFrom, backdated, actor));
        await this.history.record(t, input.modelName, backdated ? "backdate_price" : "schedule_price", actor, replaced ? versionAudit(replaced) : null, versionAudit(added));
        return (await this.versionViews(t, `WHERE v.id = $1`, [added.id], now))[0]!;
      },
      options,
    );
  }

  /** Admin: cancels a price version not yet in force (kept in history as "cancel_price"); a cancelled one is answered as it is. */
  async cancelPriceVersion(versionId: string, actor: string, options: TransactionOptions = {}): Promise<ModelPriceVersionView> {
    const id = requireVersionId(versionId);
    const now = new Date();
    return inTransaction(
      this.sequelize,
      async (t) => {
        const [row] = await this.sequelize.query<PriceVersionRow>(`SELECT * FROM model_price_versions WHERE id = $1 FOR UPDATE`, { bind: [id], transaction: t, type: QueryTypes.SELECT });
        if (!row) throw notFound("model price version", id);
        if (!row.cancelled_at) {
          if (row.effective_from.getTime() <= now.getTime()) throw notCancellable(id);
          const [cancelled] = await this.sequelize.query<PriceVersionRow>(
            `UPDATE model_price_versions SET cancelled_by = $2, cancelled_at = now() WHERE id = $1 RETURNING *`,
            { bind: [id, actor], transaction: t, type: QueryTypes.SELECT },
          );
          await this.history.record(t, row.model_name, "cancel_price", actor, versionAudit(row), versionAudit(cancelled!));
        }
        return (await this.versionViews(t, `WHERE v.id = $1`, [id], now))[0]!;
      },
      options,
    );
  }

  /** Pages through a model's price versions, latest effective_from first (cancelled ones too). */
  async listPriceVersions(modelName: string, requestedPageSize: number, pageToken: string): Promise<{ versions: ModelPriceVersionView[]; nextPageToken: string }> {
    const v = new Violations();
    v.collect(() => requireId(modelName, "model_name"));
    const size = v.collect(() => pageSize(requestedPageSize));
    v.throwIfAny();
    const after = decodePageToken(pageToken, "model_price_versions", modelName);
    if (after && (typeof after[0] !== "string" || typeof after[1] !== "string" || !/^\d+$/.test(after[1]) || Number.isNaN(Date.parse(after[0])))) {
      throw invalidField("page_token", "is not a valid page token for this request");
    }
    await this.requireKnown(modelName);
    const bind: unknown[] = [modelName];
    const keyset = after ? `AND (v.effective_from, v.id) < ($${bind.push(after[0])}::timestamptz, $${bind.push(after[1])}::bigint)` : "";
    const rows = await this.versionViews(undefined, `WHERE v.model_name = $1 ${keyset} ORDER BY v.effective_from DESC, v.id DESC LIMIT $${bind.push(size! + 1)}`, bind, new Date());
    const page = pageOf(rows, size!, (r) => [r.effectiveFrom.toISOString(), r.id], "model_price_versions", modelName);
    return { versions: page.items, nextPageToken: page.nextPageToken };
  }

  /** NOT_FOUND unless the model exists or once did (it has history). */
  private async requireKnown(modelName: string): Promise<void> {
    const exists = await this.models.count({ where: { model_name: modelName } });
    if (!exists) {
      const [any] = await this.sequelize.query(`SELECT 1 FROM ai_model_config_history WHERE model_name = $1 LIMIT 1`, { bind: [modelName], type: QueryTypes.SELECT });
      if (!any) throw notFound("model", modelName);
    }
  }

  /** Price versions chosen by `where` (over `v`), as callers see them at `now`. */
  private async versionViews(t: Transaction | undefined, where: string, bind: unknown[], now: Date): Promise<ModelPriceVersionView[]> {
    const rows = await this.sequelize.query<PriceVersionRow>(`${PRICE_VERSIONS} ${where}`, { bind, transaction: t, type: QueryTypes.SELECT });
    return rows.map((r) => ({
      ...versionTimes(r, r.next_from ?? undefined, now),
      modelName: r.model_name,
      inputCostPer1m: formatOptionalMoney(r.input_cost_per_1m, PRICE),
      outputCostPer1m: formatOptionalMoney(r.output_cost_per_1m, PRICE),
      costPerImage: formatOptionalMoney(r.cost_per_image, PRICE),
    }));
  }

  /** The live price version of a model in force at `at`, if any. */
  private async versionAt(t: Transaction, modelName: string, at: Date): Promise<PriceVersionRow | undefined> {
    const [row] = await this.sequelize.query<PriceVersionRow>(
      `SELECT * FROM model_price_versions WHERE model_name = $1 AND cancelled_at IS NULL AND effective_from <= $2 ORDER BY effective_from DESC LIMIT 1`,
      { bind: [modelName, at.toISOString()], transaction: t, type: QueryTypes.SELECT },
    );
    return row;
  }

  /** Whether a live price version of the model starts after `now`. */
  private async hasScheduled(t: Transaction, modelName: string, now: Date): Promise<boolean> {
    const [row] = await this.sequelize.query(`SELECT 1 FROM model_price_versions WHERE model_name = $1 AND cancelled_at IS NULL AND effective_from > $2 LIMIT 1`, {
      bind: [modelName, now.toISOString()],
      transaction: t,
      type: QueryTypes.SELECT,
    });
    return row !== undefined;
  }

  private async insertVersion(t: Transaction, modelName: string, prices: PriceColumns, effectiveFrom: Date, backdated: boolean, actor: string): Promise<PriceVersionRow> {
    const [row] = await this.sequelize.query<PriceVersionRow>(
      `INSERT INTO model_price_versions (model_name, input_cost_per_1m, output_cost_per_1m, cost_per_image, effective_from, backdated, created_by)
       VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *`,
      { bind: [modelName, prices.input_cost_per_1m, prices.output_cost_per_1m, prices.cost_per_image, effectiveFrom.toISOString(), backdated, actor], transaction: t, type: QueryTypes.SELECT },
    );
    return row!;
  }

  private fromPriced(r: PricedRow): ModelRecord {
    const version = r.price_version_id === null ? undefined : { ...r, id: r.price_version_id, effective_from: r.price_effective_from! };
    return fromColumns(this.models.build(r as never, { raw: true, isNewRecord: false }), version);
  }

  /** Serialises default changes for one model type. */
  private async lockType(t: Transaction, modelType: ModelType): Promise<void> {
    await this.sequelize.query(`SELECT pg_advisory_xact_lock(hashtext('billing.default_model'), hashtext($1))`, { bind: [modelType], transaction: t });
  }

  private async lockForChange(t: Transaction, modelName: string): Promise<AIModelConfig> {
    const row = await this.models.findByPk(modelName, { transaction: t, lock: t.LOCK.UPDATE });
    if (!row) throw notFound("model", modelName);
    return row;
  }

  /** Unsets the current default of `modelType` (other than `except`), with history. */
  private async clearDefault(t: Transaction, modelType: ModelType, except = ""): Promise<void> {
    await this.lockType(t, modelType);
    const previous = await this.models.findAll({ where: { model_type: modelType, is_default: true }, transaction: t, lock: t.LOCK.UPDATE });
    const now = new Date();
    for (const row of previous) {
      if (row.model_name === except) continue;
      const price = await this.versionAt(t, row.model_name, now);
      const before = fromColumns(row, price);
      await row.update({ is_default: false, updated_at: new Date() }, { transaction: t });
      await this.history.record(t, row.model_name, "unset_default", "system", auditView(before), auditView(fromColumns(row, price)));
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

function priceColumnsOf(r: ModelRow): PriceColumns {
  return { input_cost_per_1m: r.inputCostPer1m || null, output_cost_per_1m: r.outputCostPer1m || null, cost_per_image: r.costPerImage || null };
}

/** A price version as history keeps it. */
function versionAudit(r: PriceVersionRow): JsonObject {
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

function resolveMask(paths: string[], input: ModelInput): UpdatableField[] {
  if (paths.length === 0) {
    // AIP-134: no mask means every field the caller populated.
    return UPDATABLE_FIELDS.filter((f) => {
      const v = input[INPUT_KEY[f]];
      return !(v === "" || v === 0 || v === 0n || v === false || v === undefined || (Array.isArray(v) && v.length === 0));
    });
  }
  return paths.map((raw) => maskField(raw, "model_config", UPDATABLE_FIELDS));
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
  const price = (value: string, name: string) => (value === "" ? "" : v.collect(() => parseMoney(value, f(name), PRICE, { min: "0.0001" }))?.toFixed(4) ?? "");
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

function toColumns(r: ModelRow) {
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

/** A model from its row and the price version in force (none: no prices). */
function fromColumns(m: AIModelConfig, version: (PriceColumns & { id: string; effective_from: Date }) | undefined): ModelRecord {
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
