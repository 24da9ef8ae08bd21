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
 * - tokens_per_credit, min_credits, price_per_credit_usd and the rounding
 *   mode of an operation (UNSPECIFIED: the billing configuration's) are
 *   versions (../models/versions.ts, README.md "Price versions"): usage is
 *   priced with the version in force at its instant (a request's arrival,
 *   or a reservation's; see reservations.ts), and the charge records the
 *   cost config and model price version ids.
 * - Pricing reads the cost configs, *every* live version (past, in force
 *   and scheduled) and the billing configuration from a cache of at most
 *   CONFIG_CACHE_MS, and picks the version in force by comparing the
 *   instant with effective_from in memory: every replica switches to a
 *   scheduled version exactly at its effective_from (by its clock),
 *   whatever its cache's age. Only what is *written* travels with the cache
 *   age: a change through this process applies at once, through another
 *   process within CONFIG_CACHE_MS — so a version scheduled (or cancelled)
 *   less than CONFIG_CACHE_MS before its effective_from may start up to that
 *   late (or still apply up to that long) on other replicas.
 */
import type { Sequelize, Transaction } from "sequelize";
import {
  allCostConfigs,
  billingConfiguration,
  costConfig,
  costConfigsAfter,
  insertCostConfig,
  updateBillingConfiguration,
  updateCostConfig,
  type BillingConfigChanges,
  type BillingConfigRow,
  type CostConfigChanges,
  type CostConfigRow,
} from "../../db/catalogue/cost-configs.js";
import { COST_CONFIG_HISTORY } from "../../db/catalogue/history.js";
import { COST_CONFIG_VERSIONS, type CostVersionRow, type TimedVersionRow } from "../../db/catalogue/price-versions.js";
import { inTransaction, type TransactionOptions } from "../../db/transaction.js";
import { Dec, PRICE, fitsColumn, formatMoney, parseMoney, roundToInteger } from "../money.js";
import { AuditTrail, type AuditRecord } from "../audit.js";
import { BillingError, Reason, Violations, failedPrecondition, invalidField, notFound } from "../errors.js";
import { applyMask } from "../field-mask.js";
import type { JsonObject } from "../json.js";
import { costOf, type ModelCatalogue } from "../models/catalogue.js";
import { PriceTimeline, effectiveFromOf, inForceAt, versionAuditTimes, versionTimes, type VersionTimes } from "../models/versions.js";
import { pageOf, pageRequest } from "../pagination.js";
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
  /** The operation's own rounding; undefined: the billing configuration's. */
  creditRoundingMode: RoundingMode | undefined;
  /** The version in force at the instant asked ("" when none was). */
  versionId: string;
  effectiveFrom?: Date;
  updatedBy: string;
  createdAt: Date;
  updatedAt: Date;
}

/** One version of an operation's pricing. */
export interface CostConfigVersionView extends VersionTimes {
  operationType: string;
  tokensPerCredit: number;
  minCredits: number;
  pricePerCreditUsd: string;
  creditRoundingMode: RoundingMode | undefined;
}

/** A pricing version to add. */
export interface ScheduleCostInput {
  operationType: string;
  tokensPerCredit: bigint;
  minCredits: bigint;
  pricePerCreditUsd: string;
  creditRoundingMode: RoundingMode | undefined;
  /** Undefined for now. */
  effectiveFrom: Date | undefined;
  backdate: boolean;
}

/** Which prices apply to a usage: those in force at `at` (default now), or a locked cost config version. */
export interface PriceWhen {
  at?: Date;
  /** Price credits with this cost config version (a reservation's lock). */
  costConfigVersionId?: string | null;
  /** Count only model price versions added by then (a reservation's lock). */
  modelKnownAt?: Date;
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
  /** The cost config version used ("" when none was in force: explicit credits only). */
  costConfigVersionId: string;
  /** The model price version used; "" without a model. */
  modelPriceVersionId: string;
}

const COST_CONFIG_FIELDS = ["display_name", "description", "tokens_per_credit", "min_credits", "price_per_credit_usd", "credit_rounding_mode", "is_active"] as const;
/** The versioned fields of a cost config. */
const VERSIONED = ["tokens_per_credit", "min_credits", "price_per_credit_usd", "credit_rounding_mode"] as const;
const BILLING_CONFIG_FIELDS = ["default_tokens_per_credit", "default_credit_price_usd", "enable_token_based_reporting", "credit_rounding_mode"] as const;

export interface CostConfigUpdate {
  operationType: string;
  displayName: string;
  description: string;
  tokensPerCredit: bigint;
  minCredits: bigint;
  pricePerCreditUsd: string;
  /** Undefined: the billing configuration's mode (UNSPECIFIED). */
  creditRoundingMode: RoundingMode | undefined;
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
  costs: Map<string, CostConfigRow>;
  /** Every live version per operation type, by effective_from ascending. */
  versions: Map<string, CostVersionRow[]>;
  byId: Map<string, CostVersionRow>;
  billing: BillingConfigRow;
}

/** The columns of a cost config and of its pricing version a change sets. */
type CostColumns = CostConfigChanges & Partial<Pick<CostVersionRow, (typeof VERSIONED)[number]>>;

/** Pricing and its configuration. */
export class Pricing {
  private readonly history: AuditTrail;
  private readonly versions: PriceTimeline<CostVersionRow, CostConfigVersionView>;
  private cache?: PricingConfig;
  /** The configuration read in progress, shared by its callers. */
  private reading?: Promise<PricingConfig>;
  /** Bumped by every invalidation, so that a read begun before it is not cached. */
  private generation = 0;

  constructor(
    private readonly sequelize: Sequelize,
    private readonly catalogue: ModelCatalogue,
  ) {
    this.history = new AuditTrail(sequelize, COST_CONFIG_HISTORY);
    this.versions = new PriceTimeline(sequelize, COST_CONFIG_VERSIONS, {
      what: "cost config version",
      history: this.history,
      actions: { schedule: "schedule_version", backdate: "backdate_version", cancel: "cancel_version" },
      audit: costVersionAudit,
      view: costVersionView,
      changed: () => this.invalidate(),
    });
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

  /**
   * Prices `usage` for `operationType` (already validated with checkUsage)
   * with the versions in force at `when.at` (default now), or the locked
   * ones of `when`.
   */
  async price(operationType: OperationType, usage: UsageInput, field = "usage", when: PriceWhen = {}): Promise<Price> {
    const at = when.at ?? new Date();
    const { costs, versions, billing } = await this.cachedConfig();
    const config = costs.get(operationType);
    if (!config) throw unknownOperation(operationType);
    if (!config.is_active) throw failedPrecondition(Reason.OperationInactive, `operation ${operationType} is not active`, { operation_type: operationType });
    const version = when.costConfigVersionId ? await this.costVersionById(when.costConfigVersionId) : inForceAt(versions.get(operationType) ?? [], at);
    const model = usage.model ? await this.catalogue.get(usage.model, at, when.modelKnownAt).catch((e: unknown) => {
      if (e instanceof BillingError && e.kind === "not_found") throw invalidField(`${field}.model`, `unknown model ${JSON.stringify(usage.model)}`);
      throw e;
    }) : undefined;
    const costUsd = model ? costOf(model, { tokensInput: usage.tokensInput, tokensOutput: usage.tokensOutput, imageCount: usage.imageCount, size: "" }) : "";
    if (costUsd && !fitsColumn(new Dec(costUsd), PRICE)) throw invalidField(field, `costs ${costUsd} USD, more than one usage log can record`);
    const ids = { costConfigVersionId: version ? String(version.id) : "", modelPriceVersionId: model?.priceVersionId ?? "" };
    if (usage.credits > 0n) return { operationType, credits: usage.credits, costUsd, ...ids };
    if (!version) throw failedPrecondition(Reason.PriceMissing, `operation ${operationType} has no pricing in force at ${at.toISOString()}`, { operation_type: operationType });
    const mode = version.credit_rounding_mode ?? (billing.credit_rounding_mode as RoundingMode);
    let raw: Dec;
    if (usage.imageCount > 0n && usage.tokensInput === 0n && usage.tokensOutput === 0n) {
      raw = new Dec(costUsd).dividedBy(version.price_per_credit_usd);
    } else {
      raw = new Dec((usage.tokensInput + usage.tokensOutput).toString()).dividedBy(version.tokens_per_credit);
    }
    let credits = roundToInteger(raw, mode);
    const min = BigInt(version.min_credits);
    if (credits < min) credits = min;
    if (credits === 0n) throw invalidField(field, "prices to 0 credits: nothing to charge");
    return { operationType, credits, costUsd, ...ids };
  }

  /** The id of the cost config version of an operation in force at `at` ("" when none), from the cache. */
  async costVersionAt(operationType: string, at: Date): Promise<string> {
    const { versions } = await this.cachedConfig();
    const version = inForceAt(versions.get(operationType) ?? [], at);
    return version ? String(version.id) : "";
  }

  /** A cost config version by id: from the cache, else (added through another process meanwhile) from the database. */
  private async costVersionById(id: string): Promise<CostVersionRow> {
    const cached = (await this.cachedConfig()).byId.get(id);
    if (cached) return cached;
    const row = await this.versions.byId(id);
    if (!row) throw new Error(`cost config version ${id} is missing`);
    return row;
  }

  /** The cost config of an operation (modern or legacy name), with the pricing in force at `at` (default now). */
  async getCostConfig(operationType: string, at?: Date): Promise<CostConfigView> {
    const op = normalizeOperationType(operationType);
    const row = await this.costConfigRow(op);
    const live = await this.liveVersions(undefined, [op]);
    const when = at ?? new Date();
    const view = costConfigView(row, live.get(op) ?? [], when);
    if (!view.versionId) throw notFound("cost config version", `${op} at ${when.toISOString()}`);
    return view;
  }

  /** Every operation's cost config, by operation type, with the pricing in force now. */
  async listCostConfigs(activeOnly: boolean, requestedPageSize: number, pageToken: string): Promise<{ configs: CostConfigView[]; nextPageToken: string }> {
    const { size, after } = pageRequest({ pageSize: requestedPageSize, pageToken }, "cost_configs", activeOnly, ["string"]);
    const configs = await costConfigsAfter(this.sequelize, activeOnly, after?.[0] as string | undefined, size + 1);
    const live = await this.liveVersions(undefined, configs.map((c) => c.operation_type));
    const now = new Date();
    const views = configs.map((c) => costConfigView(c, live.get(c.operation_type) ?? [], now));
    const page = pageOf(views, size, (c) => [c.operationType], "cost_configs", activeOnly);
    return { configs: page.items, nextPageToken: page.nextPageToken };
  }

  /**
   * Admin: changes the masked fields of an operation's pricing, keeping
   * history; changed pricing fields are a new version in force now.
   */
  async updateCostConfig(input: CostConfigUpdate, paths: string[], actor: string, options: TransactionOptions = {}): Promise<CostConfigView> {
    const operationType = normalizeOperationType(input.operationType, "cost_config.operation_type");
    const fields = applyMask(paths, "cost_config", COST_CONFIG_FIELDS, {
      display_name: input.displayName,
      description: input.description,
      tokens_per_credit: input.tokensPerCredit,
      min_credits: input.minCredits,
      price_per_credit_usd: input.pricePerCreditUsd,
      credit_rounding_mode: input.creditRoundingMode,
      is_active: input.isActive,
    });
    const v = new Violations();
    const changes = costConfigChanges(input, fields, v);
    await this.checkOperation(v, operationType, "cost_config.operation_type");
    v.throwIfAny();
    const now = new Date();
    return inTransaction(
      this.sequelize,
      async (t) => {
        const row = await costConfig(this.sequelize, operationType, t, true);
        if (!row) throw notFound("cost config", operationType);
        const live = (await this.liveVersions(t, [operationType])).get(operationType) ?? [];
        const before = costConfigView(row, live, now);
        const current = inForceAt(live, now);
        const updated = await updateCostConfig(this.sequelize, t, operationType, { display_name: changes.display_name, description: changes.description, is_active: changes.is_active }, actor);
        const next: Partial<CostVersionRow> = {
          tokens_per_credit: current?.tokens_per_credit,
          min_credits: current?.min_credits,
          price_per_credit_usd: current ? formatMoney(current.price_per_credit_usd, PRICE) : undefined,
          credit_rounding_mode: current?.credit_rounding_mode ?? null,
        };
        let pricingChanged = false;
        for (const f of VERSIONED) {
          if (!(f in changes)) continue;
          if (changes[f] !== next[f]) pricingChanged = true;
          (next as Record<string, unknown>)[f] = changes[f];
        }
        if (pricingChanged) {
          if (next.tokens_per_credit === undefined || next.min_credits === undefined || next.price_per_credit_usd === undefined) {
            throw invalidField("update_mask", "the operation has no pricing in force: give tokens_per_credit, min_credits and price_per_credit_usd together");
          }
          live.push(await this.versions.add(t, operationType, next, now, false, actor, "update_mask"));
          live.sort((x, y) => x.effective_from.getTime() - y.effective_from.getTime());
        }
        const after = costConfigView(updated, live, now);
        await this.history.record(t, operationType, "update", actor, costConfigAudit(before), costConfigAudit(after));
        t.afterCommit(() => this.invalidate());
        return after;
      },
      options,
    );
  }

  /**
   * Admin: adds an operation type with its pricing, a first version in
   * force now (kept in history as "create"). Fields left at zero take the
   * billing configuration's defaults (tokens per credit, price per credit)
   * and 1 minimum credit; a new operation is active (UpdateCostConfig
   * deactivates it).
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
      pricePerCreditUsd: input.pricePerCreditUsd === "" ? formatMoney(billing.default_credit_price_usd, PRICE) : input.pricePerCreditUsd,
      isActive: true,
    };
    const columns = costConfigChanges(withDefaults, COST_CONFIG_FIELDS, v);
    v.throwIfAny();
    const now = new Date();
    return inTransaction(
      this.sequelize,
      async (t) => {
        const created = await insertCostConfig(this.sequelize, t, {
          operation_type: operationType!,
          display_name: columns.display_name!,
          description: columns.description ?? "",
          is_active: columns.is_active!,
          updated_by: actor,
        });
        if (!created) throw new BillingError("already_exists", Reason.AlreadyExists, `operation type ${JSON.stringify(operationType)} already exists`, [], { operation_type: operationType! });
        const version = await this.versions.add(t, operationType!, columns, now, false, actor);
        const after = costConfigView(created, [version], now);
        await this.history.record(t, operationType!, "create", actor, null, costConfigAudit(after));
        t.afterCommit(() => this.invalidate());
        return after;
      },
      options,
    );
  }

  /**
   * Admin: adds a version of an operation's pricing in force from
   * `effectiveFrom` (default now; the past only with backdate), kept in
   * history as "schedule_version" or "backdate_version" with the version it
   * takes over from.
   */
  async scheduleCostConfigVersion(input: ScheduleCostInput, actor: string, options: TransactionOptions = {}): Promise<CostConfigVersionView> {
    const now = new Date();
    const v = new Violations();
    const operationType = v.collect(() => normalizeOperationType(input.operationType));
    await this.checkOperation(v, operationType);
    const columns = costConfigChanges({ ...input, displayName: "", description: "", isActive: true }, VERSIONED, v, "");
    const when = effectiveFromOf(v, input.effectiveFrom, input.backdate, now);
    v.throwIfAny();
    return this.versions.schedule(operationType!, columns, when, actor, now, options, async (t) => {
      if (!(await costConfig(this.sequelize, operationType!, t, true))) throw unknownOperation(operationType!);
    });
  }

  /** Admin: cancels a pricing version not yet in force (kept in history as "cancel_version"); a cancelled one is answered as it is. */
  cancelCostConfigVersion(versionId: string, actor: string, options: TransactionOptions = {}): Promise<CostConfigVersionView> {
    return this.versions.cancel(versionId, actor, options);
  }

  /** Pages through an operation's pricing versions, latest effective_from first (cancelled ones too). */
  async listCostConfigVersions(operationType: string, requestedPageSize: number, pageToken: string): Promise<{ versions: CostConfigVersionView[]; nextPageToken: string }> {
    const v = new Violations();
    const op = v.collect(() => normalizeOperationType(operationType));
    await this.checkOperation(v, op);
    return this.versions.list(v, op, { pageSize: requestedPageSize, pageToken });
  }

  /** The live versions of `operationTypes`, per operation type, by effective_from. */
  private async liveVersions(t: Transaction | undefined, operationTypes: string[]): Promise<Map<string, CostVersionRow[]>> {
    return groupVersions(await this.versions.live(operationTypes, t));
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
    const fields = applyMask(paths, "billing_configuration", BILLING_CONFIG_FIELDS, {
      default_tokens_per_credit: input.defaultTokensPerCredit,
      default_credit_price_usd: input.defaultCreditPriceUsd,
      enable_token_based_reporting: input.enableTokenBasedReporting,
      credit_rounding_mode: input.creditRoundingMode,
    });
    const v = new Violations();
    const changes: BillingConfigChanges = {};
    for (const f of fields) {
      const name = `billing_configuration.${f}`;
      switch (f) {
        case "default_tokens_per_credit":
          changes.default_tokens_per_credit = checkTokensPerCredit(v, input.defaultTokensPerCredit, name);
          break;
        case "default_credit_price_usd":
          changes.default_credit_price_usd = parseCreditPrice(v, input.defaultCreditPriceUsd, name);
          break;
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
        const row = await updateBillingConfiguration(this.sequelize, t, changes, actor);
        if (!row) throw new Error("billing configuration row is missing (migrations not applied?)");
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
    const [rows, versionRows, billing] = await Promise.all([allCostConfigs(this.sequelize), this.versions.live(), this.billingRow()]);
    const config = { at, costs: new Map(rows.map((r) => [r.operation_type, r])), versions: groupVersions(versionRows), byId: new Map(versionRows.map((r) => [String(r.id), r])), billing };
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

  private async costConfigRow(operationType: OperationType): Promise<CostConfigRow> {
    const row = await costConfig(this.sequelize, operationType);
    if (!row) throw unknownOperation(operationType);
    return row;
  }

  private async billingRow(): Promise<BillingConfigRow> {
    const row = await billingConfiguration(this.sequelize);
    if (!row) throw new Error("billing configuration row is missing (migrations not applied?)");
    return row;
  }
}

function groupVersions(rows: CostVersionRow[]): Map<string, CostVersionRow[]> {
  const out = new Map<string, CostVersionRow[]>();
  for (const r of rows) {
    let list = out.get(r.operation_type);
    if (!list) out.set(r.operation_type, (list = []));
    list.push(r);
  }
  return out;
}

/**
 * An operation's cost config with the pricing in force at `at` among its
 * `live` versions (by effective_from); previous_tokens_per_credit is
 * tokens_per_credit before the last version that changed it.
 */
function costConfigView(r: CostConfigRow, live: CostVersionRow[], at: Date): CostConfigView {
  const version = inForceAt(live, at);
  let previous = 0;
  for (let k = version ? live.indexOf(version) : 0; k > 0; k--) {
    if (live[k - 1]!.tokens_per_credit !== live[k]!.tokens_per_credit) {
      previous = live[k - 1]!.tokens_per_credit;
      break;
    }
  }
  const view: CostConfigView = {
    operationType: r.operation_type as OperationType,
    displayName: r.display_name,
    description: r.description,
    tokensPerCredit: version?.tokens_per_credit ?? 0,
    minCredits: version?.min_credits ?? 0,
    pricePerCreditUsd: version ? formatMoney(version.price_per_credit_usd, PRICE) : "",
    isActive: r.is_active,
    previousTokensPerCredit: previous,
    creditRoundingMode: version?.credit_rounding_mode ?? undefined,
    versionId: version ? String(version.id) : "",
    updatedBy: r.updated_by ?? "",
    createdAt: r.created_at,
    updatedAt: r.updated_at,
  };
  if (version) view.effectiveFrom = version.effective_from;
  return view;
}

/** A pricing version as history keeps it. */
function costVersionAudit(r: CostVersionRow): JsonObject {
  return {
    ...versionAuditTimes(r),
    operation_type: r.operation_type,
    tokens_per_credit: r.tokens_per_credit,
    min_credits: r.min_credits,
    price_per_credit_usd: formatMoney(r.price_per_credit_usd, PRICE),
    credit_rounding_mode: r.credit_rounding_mode ?? "",
  };
}

/** A pricing version as callers see it at `now`. */
function costVersionView(r: TimedVersionRow<CostVersionRow>, now: Date): CostConfigVersionView {
  return {
    ...versionTimes(r, r.next_from ?? undefined, now),
    operationType: r.operation_type,
    tokensPerCredit: r.tokens_per_credit,
    minCredits: r.min_credits,
    pricePerCreditUsd: formatMoney(r.price_per_credit_usd, PRICE),
    creditRoundingMode: r.credit_rounding_mode ?? undefined,
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
    credit_rounding_mode: c.creditRoundingMode ?? "",
    version_id: c.versionId,
    effective_from: c.effectiveFrom?.toISOString() ?? "",
  };
}

function billingView(r: BillingConfigRow): BillingConfigView {
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

/** Tokens per credit: 1 to INT32_MAX (undefined when not, reported in `v` on `field`). */
function checkTokensPerCredit(v: Violations, value: bigint, field: string): number | undefined {
  if (value >= 1n && value <= INT32_MAX) return Number(value);
  v.add(field, `must be between 1 and ${INT32_MAX}`);
  return undefined;
}

/** A USD price per credit: at least 0.0001, scale 4 (undefined when bad, reported in `v` on `field`). */
function parseCreditPrice(v: Violations, value: string, field: string): string | undefined {
  const price = v.collect(() => parseMoney(value, field, PRICE, { min: "0.0001" }));
  return price && formatMoney(price, PRICE);
}

/** The columns of the cost-config `fields` of `input`, each checked; bad fields go to `v`. */
function costConfigChanges(input: CostConfigUpdate, fields: readonly string[], v: Violations, prefix = "cost_config."): CostColumns {
  const changes: CostColumns = {};
  for (const f of fields) {
    const name = `${prefix}${f}`;
    switch (f) {
      case "display_name":
        if (input.displayName === "") v.add(name, "is required");
        else if (v.collect(() => checkText(input.displayName, name, 100)) !== undefined) changes.display_name = input.displayName;
        break;
      case "description":
        if (v.collect(() => checkText(input.description, name)) !== undefined) changes.description = input.description;
        break;
      case "tokens_per_credit": {
        const tokens = checkTokensPerCredit(v, input.tokensPerCredit, name);
        if (tokens !== undefined) changes.tokens_per_credit = tokens;
        break;
      }
      case "min_credits":
        if (input.minCredits < 0n || input.minCredits > INT32_MAX) v.add(name, `must be between 0 and ${INT32_MAX}`);
        else changes.min_credits = Number(input.minCredits);
        break;
      case "price_per_credit_usd": {
        const price = parseCreditPrice(v, input.pricePerCreditUsd, name);
        if (price !== undefined) changes.price_per_credit_usd = price;
        break;
      }
      case "credit_rounding_mode":
        changes.credit_rounding_mode = input.creditRoundingMode ?? null;
        break;
      case "is_active":
        changes.is_active = input.isActive;
        break;
    }
  }
  return changes;
}
