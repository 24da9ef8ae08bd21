/**
 * Pricing: how usage becomes credits (and USD cost), plus the configuration
 * it reads — per-operation cost configs (with history) and the billing
 * configuration singleton.
 *
 * Rules:
 * - usage.credits > 0 charges exactly that many credits.
 * - Otherwise, tokens: credits = round(tokens_input + tokens_output) /
 *   tokens_per_credit) with the configured rounding mode (UP, DOWN, NEAREST
 *   half-up), and at least the operation's min_credits.
 * - Images: the image model's USD cost (count x cost_per_image) divided by
 *   the operation's price_per_credit_usd, rounded the same way, at least
 *   min_credits per call. Image usage therefore names its model.
 * - cost_usd comes from the model's catalogue prices whenever a model is
 *   given; it is empty when no model is named.
 * - An inactive operation is FAILED_PRECONDITION (OPERATION_INACTIVE); an
 *   unknown model is INVALID_ARGUMENT on usage.model.
 * - Pricing reads the cost configs and billing configuration from a cache of
 *   at most CONFIG_CACHE_MS: an update through this process applies at once,
 *   an update through another process within that time.
 */
import { QueryTypes, type Sequelize } from "sequelize";
import { modelsOf, type BillingConfiguration, type CreditCostConfig } from "../../db/models/index.js";
import { inTransaction, type TransactionOptions } from "../../db/transaction.js";
import { Dec, PRICE, fitsColumn, formatMoney, parseMoney, roundToInteger } from "../../money.js";
import { AuditTrail, type AuditRecord, type JsonObject } from "../audit.js";
import { BillingError, Reason, Violations, failedPrecondition, invalidField, notFound } from "../errors.js";
import { maskField } from "../field-mask.js";
import { costOf, type ModelCatalogue } from "../models/catalogue.js";
import { decodePageToken, pageOf, pageSize } from "../pagination.js";
import { checkText } from "../validation.js";
import { LEGACY_OPERATION_TYPES, OPERATION_TYPE_RE, normalizeOperationType, type OperationType } from "./operations.js";
import type { UsageInput } from "./types.js";

export type RoundingMode = "up" | "down" | "nearest";

/** Token pricing of one operation type. */
export interface CostConfigView {
  operationType: OperationType;
  displayName: string;
  description: string;
  tokensPerCredit: number;
  minCredits: number;
  pricePerCreditUsd: string;
  isActive: boolean;
  previousTokensPerCredit: number;
  updatedBy: string;
  createdAt: Date;
  updatedAt: Date;
}

/** The global billing configuration. */
export interface BillingConfigView {
  defaultTokensPerCredit: number;
  defaultCreditPriceUsd: string;
  enableTokenBasedReporting: boolean;
  creditRoundingMode: RoundingMode;
  updatedBy: string;
  updatedAt: Date;
}

/** What a usage costs. */
export interface Price {
  operationType: OperationType;
  credits: bigint;
  /** Scale-4 USD; "" when no model was named. */
  costUsd: string;
}

export const COST_CONFIG_FIELDS = ["display_name", "description", "tokens_per_credit", "min_credits", "price_per_credit_usd", "is_active"] as const;
export const BILLING_CONFIG_FIELDS = ["default_tokens_per_credit", "default_credit_price_usd", "enable_token_based_reporting", "credit_rounding_mode"] as const;

export interface CostConfigUpdate {
  operationType: string;
  displayName: string;
  description: string;
  tokensPerCredit: bigint;
  minCredits: bigint;
  pricePerCreditUsd: string;
  isActive: boolean;
}

export interface BillingConfigUpdate {
  defaultTokensPerCredit: bigint;
  defaultCreditPriceUsd: string;
  enableTokenBasedReporting: boolean;
  creditRoundingMode: RoundingMode | undefined;
}

const INT32_MAX = 2_147_483_647n;

/** How long pricing may use configuration read earlier. */
export const CONFIG_CACHE_MS = 1_000;

interface PricingConfig {
  at: number;
  costs: Map<string, CreditCostConfig>;
  billing: BillingConfiguration;
}

/** Pricing and its configuration. */
export class Pricing {
  readonly history: AuditTrail;
  private cache?: PricingConfig;
  /** The configuration read in progress, shared by its callers. */
  private reading?: Promise<PricingConfig>;
  /** Bumped by every invalidation, so that a read begun before it is not cached. */
  private generation = 0;

  constructor(
    private readonly sequelize: Sequelize,
    private readonly catalogue: ModelCatalogue,
  ) {
    this.history = new AuditTrail(sequelize, "credit_cost_config_history", "operation_type");
  }

  private get models() {
    return modelsOf(this.sequelize);
  }

  /**
   * Validates usage fields (prefixing them with `field`) into violations;
   * pricing itself happens in `price`.
   */
  static checkUsage(v: Violations, usage: UsageInput | undefined, field = "usage"): void {
    if (!usage) {
      v.add(field, "is required");
      return;
    }
    for (const [name, value] of [["credits", usage.credits], ["tokens_input", usage.tokensInput], ["tokens_output", usage.tokensOutput], ["image_count", usage.imageCount]] as const) {
      if (value < 0n) v.add(`${field}.${name}`, "must not be negative");
    }
    v.collect(() => checkText(usage.model, `${field}.model`));
    if (usage.credits === 0n && usage.tokensInput === 0n && usage.tokensOutput === 0n && usage.imageCount === 0n) {
      v.add(field, "must give credits > 0, or token or image counts to price");
    }
    if (usage.imageCount > 0n && usage.credits === 0n && usage.model === "") v.add(`${field}.model`, "is required to price images (the image model's per-image cost)");
  }

  /** Prices `usage` for `operationType` (already validated with checkUsage). */
  async price(operationType: OperationType, usage: UsageInput, field = "usage"): Promise<Price> {
    const { costs, billing } = await this.cachedConfig();
    const config = costs.get(operationType);
    if (!config) throw unknownOperation(operationType);
    if (!config.is_active) throw failedPrecondition(Reason.OperationInactive, `operation ${operationType} is not active`, { operation_type: operationType });
    const model = usage.model ? await this.catalogue.get(usage.model).catch((e: unknown) => {
      if (e instanceof BillingError && e.kind === "not_found") throw invalidField(`${field}.model`, `unknown model ${JSON.stringify(usage.model)}`);
      throw e;
    }) : undefined;
    const costUsd = model ? costOf(model, { tokensInput: usage.tokensInput, tokensOutput: usage.tokensOutput, imageCount: usage.imageCount, size: "" }) : "";
    if (costUsd && !fitsColumn(new Dec(costUsd), PRICE)) throw invalidField(field, `costs ${costUsd} USD, more than one usage log can record`);
    if (usage.credits > 0n) return { operationType, credits: usage.credits, costUsd };
    const mode = billing.credit_rounding_mode as RoundingMode;
    let raw: Dec;
    if (usage.imageCount > 0n && usage.tokensInput === 0n && usage.tokensOutput === 0n) {
      raw = new Dec(costUsd).dividedBy(config.price_per_credit_usd);
    } else {
      raw = new Dec((usage.tokensInput + usage.tokensOutput).toString()).dividedBy(config.tokens_per_credit);
    }
    let credits = roundToInteger(raw, mode);
    const min = BigInt(config.min_credits);
    if (credits < min) credits = min;
    if (credits === 0n) throw invalidField(field, "prices to 0 credits: nothing to charge");
    return { operationType, credits, costUsd };
  }

  /** The cost config of an operation (modern or legacy name). */
  async getCostConfig(operationType: string): Promise<CostConfigView> {
    return costConfigView(await this.costConfigRow(normalizeOperationType(operationType)));
  }

  /** Every operation's cost config, by operation type. */
  async listCostConfigs(activeOnly: boolean, requestedPageSize: number, pageToken: string): Promise<{ configs: CostConfigView[]; nextPageToken: string }> {
    const size = pageSize(requestedPageSize);
    const after = decodePageToken(pageToken, "cost_configs", activeOnly);
    if (after && typeof after[0] !== "string") throw invalidField("page_token", "is not a valid page token for this request");
    const rows = await this.sequelize.query<Record<string, unknown>>(
      `SELECT * FROM credit_cost_configs WHERE ($1::boolean IS FALSE OR is_active) AND ($2::text IS NULL OR operation_type > $2)
       ORDER BY operation_type LIMIT $3`,
      { bind: [activeOnly, after ? after[0] : null, size + 1], type: QueryTypes.SELECT },
    );
    const views = rows.map((r) => costConfigView(this.models.CreditCostConfig.build(r as never, { raw: true, isNewRecord: false })));
    const page = pageOf(views, size, (c) => [c.operationType], "cost_configs", activeOnly);
    return { configs: page.items, nextPageToken: page.nextPageToken };
  }

  /** Admin: changes the masked fields of an operation's pricing, keeping history. */
  async updateCostConfig(input: CostConfigUpdate, paths: string[], actor: string, options: TransactionOptions = {}): Promise<CostConfigView> {
    const operationType = normalizeOperationType(input.operationType, "cost_config.operation_type");
    const fields = paths.length
      ? paths.map((p) => maskField(p, "cost_config", COST_CONFIG_FIELDS))
      : COST_CONFIG_FIELDS.filter((f) => {
          const value = { display_name: input.displayName, description: input.description, tokens_per_credit: input.tokensPerCredit, min_credits: input.minCredits, price_per_credit_usd: input.pricePerCreditUsd, is_active: input.isActive }[f];
          return !(value === "" || value === 0n || value === false);
        });
    if (fields.length === 0) throw invalidField("update_mask", "names no field to update");
    const v = new Violations();
    const changes = costConfigChanges(input, fields, v);
    await this.checkOperation(v, operationType, "cost_config.operation_type");
    v.throwIfAny();
    return inTransaction(
      this.sequelize,
      async (t) => {
        const row = await this.models.CreditCostConfig.findByPk(operationType, { transaction: t, lock: t.LOCK.UPDATE });
        if (!row) throw notFound("cost config", operationType);
        const before = costConfigView(row);
        if (changes.tokens_per_credit !== undefined && changes.tokens_per_credit !== row.tokens_per_credit) {
          changes.previous_tokens_per_credit = row.tokens_per_credit;
        }
        await row.update({ ...changes, updated_by: actor, updated_at: new Date() }, { transaction: t });
        const after = costConfigView(row);
        await this.history.record(t, operationType, "update", actor, costConfigAudit(before), costConfigAudit(after));
        t.afterCommit(() => this.invalidate());
        return after;
      },
      options,
    );
  }

  /**
   * Admin: adds an operation type with its pricing (kept in history as
   * "create"). Fields left at zero take the billing configuration's defaults
   * (tokens per credit, price per credit) and 1 minimum credit; a new
   * operation is active (UpdateCostConfig deactivates it).
   */
  async createCostConfig(input: CostConfigUpdate, actor: string, options: TransactionOptions = {}): Promise<CostConfigView> {
    const v = new Violations();
    const field = "cost_config.operation_type";
    const operationType = v.collect(() => {
      if (!OPERATION_TYPE_RE.test(input.operationType)) normalizeOperationType(input.operationType, field);
      if (Object.hasOwn(LEGACY_OPERATION_TYPES, input.operationType)) throw invalidField(field, `is a legacy name of ${LEGACY_OPERATION_TYPES[input.operationType]}`);
      return input.operationType;
    });
    const { billing } = await this.cachedConfig();
    const withDefaults: CostConfigUpdate = {
      ...input,
      tokensPerCredit: input.tokensPerCredit === 0n ? BigInt(billing.default_tokens_per_credit) : input.tokensPerCredit,
      minCredits: input.minCredits === 0n ? 1n : input.minCredits,
      pricePerCreditUsd: input.pricePerCreditUsd === "" ? new Dec(billing.default_credit_price_usd).toFixed(4) : input.pricePerCreditUsd,
      isActive: true,
    };
    const columns = costConfigChanges(withDefaults, COST_CONFIG_FIELDS, v);
    v.throwIfAny();
    return inTransaction(
      this.sequelize,
      async (t) => {
        const [created] = await this.sequelize.query<{ operation_type: string }>(
          `INSERT INTO credit_cost_configs (operation_type, display_name, description, tokens_per_credit, min_credits, price_per_credit_usd, is_active, updated_by)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (operation_type) DO NOTHING RETURNING operation_type`,
          {
            bind: [operationType, columns.display_name, columns.description ?? "", columns.tokens_per_credit, columns.min_credits, columns.price_per_credit_usd, columns.is_active, actor],
            transaction: t,
            type: QueryTypes.SELECT,
          },
        );
        if (!created) throw new BillingError("already_exists", Reason.AlreadyExists, `operation type ${JSON.stringify(operationType)} already exists`, [], { operation_type: operationType! });
        const after = costConfigView((await this.models.CreditCostConfig.findByPk(operationType!, { transaction: t }))!);
        await this.history.record(t, operationType!, "create", actor, null, costConfigAudit(after));
        t.afterCommit(() => this.invalidate());
        return after;
      },
      options,
    );
  }

  /** That an operation type exists (from the cached configuration), or INVALID_ARGUMENT naming `field`. */
  async requireOperation(operationType: string, field = "operation_type"): Promise<void> {
    const { costs } = await this.cachedConfig();
    if (!costs.has(operationType)) throw unknownOperation(operationType, field);
  }

  /** That an operation type is active, or FAILED_PRECONDITION / OPERATION_INACTIVE (it must exist). */
  async requireActiveOperation(operationType: string): Promise<void> {
    const { costs } = await this.cachedConfig();
    if (costs.get(operationType)?.is_active === false) {
      throw failedPrecondition(Reason.OperationInactive, `operation ${operationType} is not active`, { operation_type: operationType });
    }
  }

  /** Records an unknown operation type in `v` with the request's other bad fields (nothing when `operationType` is undefined). */
  async checkOperation(v: Violations, operationType: string | undefined, field = "operation_type"): Promise<void> {
    if (operationType !== undefined) await v.collectAsync(() => this.requireOperation(operationType, field));
  }

  /** Pages through an operation's pricing changes, newest first. */
  listCostConfigHistory(operationType: string, requestedPageSize: number, pageToken: string): Promise<{ entries: AuditRecord[]; nextPageToken: string }> {
    return this.history.list(normalizeOperationType(operationType), requestedPageSize, pageToken);
  }

  /** The billing configuration. */
  async getBillingConfiguration(): Promise<BillingConfigView> {
    return billingView(await this.billingRow());
  }

  /** Admin: changes the masked fields of the billing configuration. */
  async updateBillingConfiguration(input: BillingConfigUpdate, paths: string[], actor: string, options: TransactionOptions = {}): Promise<BillingConfigView> {
    const fields = paths.length
      ? paths.map((p) => maskField(p, "billing_configuration", BILLING_CONFIG_FIELDS))
      : BILLING_CONFIG_FIELDS.filter((f) => {
          const value = { default_tokens_per_credit: input.defaultTokensPerCredit, default_credit_price_usd: input.defaultCreditPriceUsd, enable_token_based_reporting: input.enableTokenBasedReporting, credit_rounding_mode: input.creditRoundingMode }[f];
          return !(value === "" || value === 0n || value === false || value === undefined);
        });
    if (fields.length === 0) throw invalidField("update_mask", "names no field to update");
    const v = new Violations();
    const changes: Record<string, unknown> = {};
    for (const f of fields) {
      const name = `billing_configuration.${f}`;
      switch (f) {
        case "default_tokens_per_credit":
          if (input.defaultTokensPerCredit < 1n || input.defaultTokensPerCredit > INT32_MAX) v.add(name, `must be between 1 and ${INT32_MAX}`);
          else changes.default_tokens_per_credit = Number(input.defaultTokensPerCredit);
          break;
        case "default_credit_price_usd": {
          const price = v.collect(() => parseMoney(input.defaultCreditPriceUsd, name, PRICE, { min: "0.0001" }));
          if (price) changes.default_credit_price_usd = price.toFixed(4);
          break;
        }
        case "enable_token_based_reporting":
          changes.enable_token_based_reporting = input.enableTokenBasedReporting;
          break;
        case "credit_rounding_mode":
          if (!input.creditRoundingMode) v.add(name, "must be UP, DOWN or NEAREST");
          else changes.credit_rounding_mode = input.creditRoundingMode;
          break;
      }
    }
    v.throwIfAny();
    return inTransaction(
      this.sequelize,
      async (t) => {
        const row = await this.models.BillingConfiguration.findByPk(1, { transaction: t, lock: t.LOCK.UPDATE });
        if (!row) throw new Error("billing configuration row is missing (migrations not applied?)");
        await row.update({ ...changes, updated_by: actor, updated_at: new Date() }, { transaction: t });
        t.afterCommit(() => this.invalidate());
        return billingView(row);
      },
      options,
    );
  }

  /**
   * Cost configs and billing configuration, never older than CONFIG_CACHE_MS.
   * Past half that age one background read (shared by every caller) renews
   * it while callers keep the cached copy, so a busy service never has all
   * its calls wait on the re-read, nor issue one read each.
   */
  private cachedConfig(): Promise<PricingConfig> | PricingConfig {
    const age = this.cache ? Date.now() - this.cache.at : Infinity;
    if (age < CONFIG_CACHE_MS / 2) return this.cache!;
    let reading = this.reading;
    if (!reading) {
      const read = this.readConfig().finally(() => {
        if (this.reading === read) this.reading = undefined;
      });
      this.reading = reading = read;
    }
    if (age < CONFIG_CACHE_MS) {
      reading.catch(() => undefined); // a failed renewal is retried by the next caller
      return this.cache!;
    }
    return reading;
  }

  private async readConfig(): Promise<PricingConfig> {
    const generation = this.generation;
    const at = Date.now();
    const [rows, billing] = await Promise.all([this.models.CreditCostConfig.findAll(), this.billingRow()]);
    const config = { at, costs: new Map(rows.map((r) => [r.operation_type, r])), billing };
    // An update committed during the read invalidated it: keep what the next read sees.
    if (generation === this.generation) this.cache = config;
    return config;
  }

  /** Drops the cached configuration (after this process committed a change to it). */
  private invalidate(): void {
    this.cache = undefined;
    this.reading = undefined;
    this.generation++;
  }

  private async costConfigRow(operationType: OperationType): Promise<CreditCostConfig> {
    const row = await this.models.CreditCostConfig.findByPk(operationType);
    if (!row) throw unknownOperation(operationType);
    return row;
  }

  private async billingRow() {
    const row = await this.models.BillingConfiguration.findByPk(1);
    if (!row) throw new Error("billing configuration row is missing (migrations not applied?)");
    return row;
  }
}

function costConfigView(r: CreditCostConfig): CostConfigView {
  return {
    operationType: r.operation_type as OperationType,
    displayName: r.display_name,
    description: r.description,
    tokensPerCredit: r.tokens_per_credit,
    minCredits: r.min_credits,
    pricePerCreditUsd: formatMoney(r.price_per_credit_usd, PRICE),
    isActive: r.is_active,
    previousTokensPerCredit: r.previous_tokens_per_credit ?? 0,
    updatedBy: r.updated_by ?? "",
    createdAt: r.created_at,
    updatedAt: r.updated_at,
  };
}

function costConfigAudit(c: CostConfigView): JsonObject {
  return {
    operation_type: c.operationType,
    display_name: c.displayName,
    description: c.description,
    tokens_per_credit: c.tokensPerCredit,
    min_credits: c.minCredits,
    price_per_credit_usd: c.pricePerCreditUsd,
    is_active: c.isActive,
    previous_tokens_per_credit: c.previousTokensPerCredit,
  };
}

function billingView(r: { default_tokens_per_credit: number; default_credit_price_usd: string; enable_token_based_reporting: boolean; credit_rounding_mode: string; updated_by: string | null; updated_at: Date }): BillingConfigView {
  return {
    defaultTokensPerCredit: r.default_tokens_per_credit,
    defaultCreditPriceUsd: formatMoney(r.default_credit_price_usd, PRICE),
    enableTokenBasedReporting: r.enable_token_based_reporting,
    creditRoundingMode: r.credit_rounding_mode as RoundingMode,
    updatedBy: r.updated_by ?? "",
    updatedAt: r.updated_at,
  };
}


/** INVALID_ARGUMENT: no cost config names this operation type. */
function unknownOperation(operationType: string, field = "operation_type"): BillingError {
  return invalidField(field, `unknown operation type ${JSON.stringify(operationType)}; ListCostConfigs lists them, and admins add one with CreateCostConfig`);
}

/** The columns of the cost-config `fields` of `input`, each checked; bad fields go to `v`. */
function costConfigChanges(input: CostConfigUpdate, fields: readonly string[], v: Violations): Partial<Record<string, unknown>> {
  const changes: Partial<Record<string, unknown>> = {};
  for (const f of fields) {
    const name = `cost_config.${f}`;
    switch (f) {
      case "display_name":
        if (input.displayName === "") v.add(name, "is required");
        else if (v.collect(() => checkText(input.displayName, name, 100)) !== undefined) changes.display_name = input.displayName;
        break;
      case "description":
        if (v.collect(() => checkText(input.description, name)) !== undefined) changes.description = input.description;
        break;
      case "tokens_per_credit":
        if (input.tokensPerCredit < 1n || input.tokensPerCredit > INT32_MAX) v.add(name, `must be between 1 and ${INT32_MAX}`);
        else changes.tokens_per_credit = Number(input.tokensPerCredit);
        break;
      case "min_credits":
        if (input.minCredits < 0n || input.minCredits > INT32_MAX) v.add(name, `must be between 0 and ${INT32_MAX}`);
        else changes.min_credits = Number(input.minCredits);
        break;
      case "price_per_credit_usd": {
        const price = v.collect(() => parseMoney(input.pricePerCreditUsd, name, PRICE, { min: "0.0001" }));
        if (price) changes.price_per_credit_usd = price.toFixed(4);
        break;
      }
      case "is_active":
        changes.is_active = input.isActive;
        break;
    }
  }
  return changes;
}
