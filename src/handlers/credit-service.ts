/**
 * CreditService: proto <-> domain mapping for the ledger, pricing,
 * reservations, plan limits, packages and usage reports. No rules here.
 */
import { create } from "@bufbuild/protobuf";
import { durationMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import {
  AdjustCreditsResponseSchema,
  BillingConfigurationSchema,
  CommitReservationResponseSchema,
  ConsumePlanLimitResponseSchema,
  CostConfigSchema,
  CreateCreditPackageResponseSchema,
  CreditPackageSchema,
  CreditRoundingMode,
  CreditService,
  DeductCreditsResponseSchema,
  EstimateCreditsResponseSchema,
  GetBalanceResponseSchema,
  GetBillingConfigurationResponseSchema,
  GetCostConfigResponseSchema,
  GetCreditPackageResponseSchema,
  GetPlanLimitUsageResponseSchema,
  GetUsageSummaryResponseSchema,
  GrantCreditsResponseSchema,
  ListCostConfigHistoryResponseSchema,
  ListCostConfigsResponseSchema,
  ListCreditPackagesResponseSchema,
  ListTransactionsResponseSchema,
  ListUsageLogsResponseSchema,
  PlanLimitStatusSchema,
  PlanLimitType,
  ReleaseReservationResponseSchema,
  ReservationSchema,
  ReservationStatus,
  ReserveCreditsResponseSchema,
  SetPlanLimitsResponseSchema,
  UpdateBillingConfigurationResponseSchema,
  UpdateCostConfigResponseSchema,
  UpdateCreditPackageResponseSchema,
  UsageGroupBy,
  UsageSummaryGroupSchema,
  WatchBalanceResponseSchema,
  CreateCostConfigResponseSchema,
  CancelCostConfigVersionResponseSchema,
  CostConfigVersionSchema,
  ListCostConfigVersionsResponseSchema,
  ScheduleCostConfigVersionResponseSchema,
  type CostConfig,
  ListCreditLotsResponseSchema,
  VoidCreditLotResponseSchema,
  type CreditPackage,
  type Usage,
} from "../../gen/billing/v1/credit_service_pb.js";
import { watchBalance, type BalanceSubscriptions } from "../domain/credits/balance-watch.js";
import type { CreditLedger } from "../domain/credits/ledger.js";
import type { CreditLots } from "../domain/credits/lots.js";
import type { CreditPackages, PackageInput, PackageView } from "../domain/credits/packages.js";
import type { LimitType, PlanLimits, PlanLimitView } from "../domain/credits/plan-limits.js";
import { Pricing, type BillingConfigView, type CostConfigVersionView, type CostConfigView, type RoundingMode } from "../domain/credits/pricing.js";
import type { ReservationStatus as DomainReservationStatus, ReservationView, Reservations } from "../domain/credits/reservations.js";
import type { UsageInput } from "../domain/credits/types.js";
import type { GroupBy, SummaryGroup, UsageReports } from "../domain/credits/usage.js";
import { Violations, invalidField } from "../domain/errors.js";
import { normalizeOperationType } from "../domain/credits/operations.js";
import { principalOf } from "../auth/principal.js";
import {
  auditToProto,
  balanceToProto,
  calendarDateToProto,
  dateOf,
  enumFromProto,
  enumsFromProto,
  enumToProto,
  LOT_CATEGORIES,
  LOT_STATES,
  lotToProto,
  transactionToProto,
  ts,
  TX_TYPES,
  txOptions,
  usageLogToProto,
  versionTimesToProto,
} from "./convert.js";

export interface CreditServiceDeps {
  ledger: CreditLedger;
  pricing: Pricing;
  reservations: Reservations;
  planLimits: PlanLimits;
  packages: CreditPackages;
  usage: UsageReports;
  lots: CreditLots;
  notifications: BalanceSubscriptions;
}

const roundingModes: [CreditRoundingMode, RoundingMode][] = [
  [CreditRoundingMode.UP, "up"],
  [CreditRoundingMode.DOWN, "down"],
  [CreditRoundingMode.NEAREST, "nearest"],
];
const limitTypes: [PlanLimitType, LimitType][] = [
  [PlanLimitType.CONTENT_IDEAS, "content_ideas"],
  [PlanLimitType.CONTENT_WORDS, "content_words"],
  [PlanLimitType.IMAGES_BASIC, "images_basic"],
  [PlanLimitType.IMAGES_PREMIUM, "images_premium"],
  [PlanLimitType.IMAGE_PROMPTS, "image_prompts"],
];
const reservationStatuses: [ReservationStatus, DomainReservationStatus][] = [
  [ReservationStatus.ACTIVE, "active"],
  [ReservationStatus.COMMITTED, "committed"],
  [ReservationStatus.RELEASED, "released"],
  [ReservationStatus.EXPIRED, "expired"],
];
const groupBys: [UsageGroupBy, GroupBy][] = [
  [UsageGroupBy.OPERATION, "operation"],
  [UsageGroupBy.MODEL, "model"],
  [UsageGroupBy.DAY, "day"],
];

function usageOf(u: Usage | undefined): UsageInput | undefined {
  return u && { credits: u.credits, tokensInput: u.tokensInput, tokensOutput: u.tokensOutput, model: u.model, imageCount: u.imageCount };
}

function reservationToProto(r: ReservationView) {
  return create(ReservationSchema, {
    id: r.id,
    accountId: r.accountId,
    operationType: r.operationType,
    credits: r.credits,
    status: enumToProto(reservationStatuses, r.status),
    creditsCommitted: r.creditsCommitted,
    expiresAt: ts(r.expiresAt),
    createdAt: ts(r.createdAt),
    settledAt: ts(r.settledAt),
    costConfigVersionId: r.costConfigVersionId,
    pricedAt: ts(r.pricedAt),
  });
}

function costConfigToProto(c: CostConfigView) {
  return create(CostConfigSchema, {
    operationType: c.operationType,
    displayName: c.displayName,
    description: c.description,
    tokensPerCredit: BigInt(c.tokensPerCredit),
    minCredits: BigInt(c.minCredits),
    pricePerCreditUsd: c.pricePerCreditUsd,
    isActive: c.isActive,
    previousTokensPerCredit: BigInt(c.previousTokensPerCredit),
    updatedBy: c.updatedBy,
    createdAt: ts(c.createdAt),
    updatedAt: ts(c.updatedAt),
    creditRoundingMode: c.creditRoundingMode ? enumToProto(roundingModes, c.creditRoundingMode) : CreditRoundingMode.UNSPECIFIED,
    versionId: c.versionId,
    effectiveFrom: ts(c.effectiveFrom),
  });
}

function costVersionToProto(v: CostConfigVersionView) {
  return create(CostConfigVersionSchema, {
    ...versionTimesToProto(v),
    operationType: v.operationType,
    tokensPerCredit: BigInt(v.tokensPerCredit),
    minCredits: BigInt(v.minCredits),
    pricePerCreditUsd: v.pricePerCreditUsd,
    creditRoundingMode: v.creditRoundingMode ? enumToProto(roundingModes, v.creditRoundingMode) : CreditRoundingMode.UNSPECIFIED,
  });
}

function billingToProto(b: BillingConfigView) {
  return create(BillingConfigurationSchema, {
    defaultTokensPerCredit: BigInt(b.defaultTokensPerCredit),
    defaultCreditPriceUsd: b.defaultCreditPriceUsd,
    enableTokenBasedReporting: b.enableTokenBasedReporting,
    creditRoundingMode: enumToProto(roundingModes, b.creditRoundingMode),
    updatedBy: b.updatedBy,
    updatedAt: ts(b.updatedAt),
  });
}

function limitToProto(l: PlanLimitView) {
  return create(PlanLimitStatusSchema, {
    limitType: enumToProto(limitTypes, l.limitType),
    limit: l.limit,
    amountUsed: l.amountUsed,
    remaining: l.remaining,
    percentUsed: l.percentUsed,
    periodStart: calendarDateToProto(l.periodStart),
    periodEnd: calendarDateToProto(l.periodEnd),
  });
}

function packageToProto(p: PackageView) {
  return create(CreditPackageSchema, { ...p, createdAt: ts(p.createdAt), updatedAt: ts(p.updatedAt) });
}

function packageInput(p: CreditPackage | undefined): PackageInput {
  const c = p ?? create(CreditPackageSchema);
  return {
    name: c.name,
    slug: c.slug,
    credits: c.credits,
    price: c.price,
    discountPercentage: c.discountPercentage,
    currency: c.currency,
    stripeProductId: c.stripeProductId,
    stripePriceId: c.stripePriceId,
    paypalPlanId: c.paypalPlanId,
    isActive: c.isActive,
    isFeatured: c.isFeatured,
    description: c.description,
    features: c.features,
    sortOrder: c.sortOrder,
  };
}

function groupToProto(g: SummaryGroup) {
  return create(UsageSummaryGroupSchema, { ...g, repricedCostUsd: g.repricedCostUsd ?? "" });
}

function costConfigInput(config: CostConfig | undefined) {
  const c = config ?? create(CostConfigSchema);
  return {
    operationType: c.operationType,
    displayName: c.displayName,
    description: c.description,
    tokensPerCredit: c.tokensPerCredit,
    minCredits: c.minCredits,
    pricePerCreditUsd: c.pricePerCreditUsd,
    creditRoundingMode: enumFromProto(roundingModes, c.creditRoundingMode, "cost_config.credit_rounding_mode"),
    isActive: c.isActive,
  };
}

/** The whole CreditService. */
export function createCreditServiceHandler(d: CreditServiceDeps): ServiceImpl<typeof CreditService> {
  return {
    async listCreditLots(req) {
      const r = await d.lots.list({
        accountId: req.accountId,
        categories: enumsFromProto(LOT_CATEGORIES, req.categories, "categories"),
        states: enumsFromProto(LOT_STATES, req.states, "states"),
        pageSize: req.pageSize,
        pageToken: req.pageToken,
      });
      return create(ListCreditLotsResponseSchema, { lots: r.lots.map(lotToProto), nextPageToken: r.nextPageToken });
    },

    async voidCreditLot(req, ctx: HandlerContext) {
      const r = await d.lots.void({ lotId: req.lotId, reason: req.reason, idempotencyKey: req.idempotencyKey }, principalOf(ctx).name, txOptions(ctx));
      return create(VoidCreditLotResponseSchema, { lot: lotToProto(r.lot), transaction: r.transaction && transactionToProto(r.transaction) });
    },

    async getBalance(req) {
      return create(GetBalanceResponseSchema, { balance: balanceToProto(await d.ledger.getBalance(req.accountId)) });
    },

    async grantCredits(req, ctx: HandlerContext) {
      const r = await d.ledger.grant(
        {
          accountId: req.accountId,
          amount: req.amount,
          type: enumFromProto(TX_TYPES, req.type, "type"),
          description: req.description,
          metadata: req.metadata ?? {},
          paymentId: req.paymentId,
          idempotencyKey: req.idempotencyKey,
          lot: {
            category: enumFromProto(LOT_CATEGORIES, req.category, "category"),
            priority: req.priority,
            effectiveAt: dateOf(req.effectiveAt, "effective_at"),
            expiresAt: dateOf(req.expiresAt, "expires_at"),
          },
        },
        principalOf(ctx).name,
        txOptions(ctx),
      );
      return create(GrantCreditsResponseSchema, { transaction: transactionToProto(r.transaction), balance: balanceToProto(r.balance), lot: r.lot && lotToProto(r.lot) });
    },

    async adjustCredits(req, ctx: HandlerContext) {
      const r = await d.ledger.adjust({ accountId: req.accountId, amount: req.amount, reason: req.reason, idempotencyKey: req.idempotencyKey }, principalOf(ctx).name, txOptions(ctx));
      return create(AdjustCreditsResponseSchema, { transaction: transactionToProto(r.transaction), balance: balanceToProto(r.balance) });
    },

    async deductCredits(req, ctx: HandlerContext) {
      const r = await d.ledger.deduct(
        {
          accountId: req.accountId,
          operationType: req.operationType,
          usage: usageOf(req.usage),
          relatedObjectType: req.relatedObjectType,
          relatedObjectId: req.relatedObjectId,
          metadata: req.metadata ?? {},
          idempotencyKey: req.idempotencyKey,
        },
        txOptions(ctx),
      );
      return create(DeductCreditsResponseSchema, { transaction: transactionToProto(r.transaction), usageLog: usageLogToProto(r.usageLog), balance: balanceToProto(r.balance) });
    },

    async estimateCredits(req) {
      const v = new Violations();
      const op = v.collect(() => normalizeOperationType(req.operationType));
      const usage = usageOf(req.usage);
      Pricing.checkUsage(v, usage);
      const at = v.collect(() => dateOf(req.at, "at"));
      await d.pricing.checkOperation(v, op);
      v.throwIfAny();
      const price = await d.pricing.price(op!, usage!, "usage", { at });
      return create(EstimateCreditsResponseSchema, {
        credits: price.credits,
        costUsd: price.costUsd,
        operationType: price.operationType,
        costConfigVersionId: price.costConfigVersionId,
        modelPriceVersionId: price.modelPriceVersionId,
      });
    },

    async reserveCredits(req, ctx: HandlerContext) {
      const ttlMs = req.ttl ? durationMs(req.ttl) : undefined;
      const r = await d.reservations.reserve(
        { accountId: req.accountId, operationType: req.operationType, credits: req.credits, ttlSeconds: ttlMs === undefined ? undefined : ttlMs / 1000, idempotencyKey: req.idempotencyKey },
        txOptions(ctx),
      );
      return create(ReserveCreditsResponseSchema, { reservation: reservationToProto(r.reservation), balance: balanceToProto(r.balance) });
    },

    async commitReservation(req, ctx: HandlerContext) {
      const r = await d.reservations.commit(
        {
          reservationId: req.reservationId,
          usage: usageOf(req.usage),
          idempotencyKey: req.idempotencyKey,
          relatedObjectType: req.relatedObjectType,
          relatedObjectId: req.relatedObjectId,
          metadata: req.metadata ?? {},
          priceAtCommit: req.priceAtCommit,
        },
        txOptions(ctx),
      );
      return create(CommitReservationResponseSchema, {
        reservation: reservationToProto(r.reservation),
        transaction: transactionToProto(r.transaction),
        usageLog: usageLogToProto(r.usageLog),
        balance: balanceToProto(r.balance),
      });
    },

    async releaseReservation(req, ctx: HandlerContext) {
      const r = await d.reservations.release(req.reservationId, txOptions(ctx));
      return create(ReleaseReservationResponseSchema, { reservation: reservationToProto(r.reservation), balance: balanceToProto(r.balance) });
    },

    async listTransactions(req) {
      const r = await d.ledger.listTransactions({
        accountId: req.accountId,
        types: enumsFromProto(TX_TYPES, req.types, "types"),
        startTime: dateOf(req.startTime, "start_time"),
        endTime: dateOf(req.endTime, "end_time"),
        pageSize: req.pageSize,
        pageToken: req.pageToken,
      });
      return create(ListTransactionsResponseSchema, { transactions: r.transactions.map(transactionToProto), nextPageToken: r.nextPageToken });
    },

    async listUsageLogs(req) {
      const r = await d.usage.listLogs({
        accountId: req.accountId,
        operationType: req.operationType,
        startTime: dateOf(req.startTime, "start_time"),
        endTime: dateOf(req.endTime, "end_time"),
        pageSize: req.pageSize,
        pageToken: req.pageToken,
      });
      return create(ListUsageLogsResponseSchema, { usageLogs: r.logs.map(usageLogToProto), nextPageToken: r.nextPageToken });
    },

    async getUsageSummary(req) {
      const r = await d.usage.summary({
        accountId: req.accountId,
        startTime: dateOf(req.startTime, "start_time"),
        endTime: dateOf(req.endTime, "end_time"),
        groupBy: enumFromProto(groupBys, req.groupBy, "group_by"),
        repriceAt: dateOf(req.repriceAt, "reprice_at"),
      });
      return create(GetUsageSummaryResponseSchema, { groups: r.groups.map(groupToProto), total: groupToProto(r.total) });
    },

    async *watchBalance(req, ctx: HandlerContext) {
      for await (const balance of watchBalance(d.ledger, d.notifications, req.accountId, ctx.signal)) {
        yield create(WatchBalanceResponseSchema, { balance: balanceToProto(balance) });
      }
      // The watch ends only when the signal aborts: the caller left or the server is shutting down; callers reconnect elsewhere.
      throw new ConnectError("the server is shutting down; watch again on another instance", Code.Unavailable);
    },

    async getCostConfig(req) {
      return create(GetCostConfigResponseSchema, { costConfig: costConfigToProto(await d.pricing.getCostConfig(req.operationType, dateOf(req.at, "at"))) });
    },

    async listCostConfigs(req) {
      const r = await d.pricing.listCostConfigs(req.activeOnly, req.pageSize, req.pageToken);
      return create(ListCostConfigsResponseSchema, { costConfigs: r.configs.map(costConfigToProto), nextPageToken: r.nextPageToken });
    },

    async createCostConfig(req, ctx: HandlerContext) {
      const r = await d.pricing.createCostConfig(costConfigInput(req.costConfig), principalOf(ctx).name, txOptions(ctx));
      return create(CreateCostConfigResponseSchema, { costConfig: costConfigToProto(r) });
    },

    async updateCostConfig(req, ctx: HandlerContext) {
      const r = await d.pricing.updateCostConfig(costConfigInput(req.costConfig), req.updateMask?.paths ?? [], principalOf(ctx).name, txOptions(ctx));
      return create(UpdateCostConfigResponseSchema, { costConfig: costConfigToProto(r) });
    },

    async scheduleCostConfigVersion(req, ctx: HandlerContext) {
      const r = await d.pricing.scheduleCostConfigVersion(
        {
          operationType: req.operationType,
          tokensPerCredit: req.tokensPerCredit,
          minCredits: req.minCredits,
          pricePerCreditUsd: req.pricePerCreditUsd,
          creditRoundingMode: enumFromProto(roundingModes, req.creditRoundingMode, "credit_rounding_mode"),
          effectiveFrom: dateOf(req.effectiveFrom, "effective_from"),
          backdate: req.backdate,
        },
        principalOf(ctx).name,
        txOptions(ctx),
      );
      return create(ScheduleCostConfigVersionResponseSchema, { version: costVersionToProto(r) });
    },

    async cancelCostConfigVersion(req, ctx: HandlerContext) {
      const r = await d.pricing.cancelCostConfigVersion(req.versionId, principalOf(ctx).name, txOptions(ctx));
      return create(CancelCostConfigVersionResponseSchema, { version: costVersionToProto(r) });
    },

    async listCostConfigVersions(req) {
      const r = await d.pricing.listCostConfigVersions(req.operationType, req.pageSize, req.pageToken);
      return create(ListCostConfigVersionsResponseSchema, { versions: r.versions.map(costVersionToProto), nextPageToken: r.nextPageToken });
    },

    async listCostConfigHistory(req) {
      const r = await d.pricing.listCostConfigHistory(req.operationType, req.pageSize, req.pageToken);
      return create(ListCostConfigHistoryResponseSchema, { entries: r.entries.map(auditToProto), nextPageToken: r.nextPageToken });
    },

    async getBillingConfiguration() {
      return create(GetBillingConfigurationResponseSchema, { billingConfiguration: billingToProto(await d.pricing.getBillingConfiguration()) });
    },

    async updateBillingConfiguration(req, ctx: HandlerContext) {
      const b = req.billingConfiguration ?? create(BillingConfigurationSchema);
      const r = await d.pricing.updateBillingConfiguration(
        {
          defaultTokensPerCredit: b.defaultTokensPerCredit,
          defaultCreditPriceUsd: b.defaultCreditPriceUsd,
          enableTokenBasedReporting: b.enableTokenBasedReporting,
          creditRoundingMode: enumFromProto(roundingModes, b.creditRoundingMode, "billing_configuration.credit_rounding_mode"),
        },
        req.updateMask?.paths ?? [],
        principalOf(ctx).name,
        txOptions(ctx),
      );
      return create(UpdateBillingConfigurationResponseSchema, { billingConfiguration: billingToProto(r) });
    },

    async setPlanLimits(req, ctx: HandlerContext) {
      const limits = await d.planLimits.set(
        {
          accountId: req.accountId,
          periodStart: req.periodStart,
          periodEnd: req.periodEnd,
          limits: req.limits.map((l, i) => ({ limitType: enumFromProto(limitTypes, l.limitType, `limits[${i}].limit_type`), limit: l.limit })),
        },
        txOptions(ctx),
      );
      return create(SetPlanLimitsResponseSchema, { limits: limits.map(limitToProto) });
    },

    async consumePlanLimit(req, ctx: HandlerContext) {
      const limit = await d.planLimits.consume(
        { accountId: req.accountId, limitType: enumFromProto(limitTypes, req.limitType, "limit_type"), amount: req.amount, idempotencyKey: req.idempotencyKey },
        txOptions(ctx),
      );
      return create(ConsumePlanLimitResponseSchema, { limit: limitToProto(limit) });
    },

    async getPlanLimitUsage(req) {
      const limits = await d.planLimits.usage(req.accountId, req.date);
      return create(GetPlanLimitUsageResponseSchema, { limits: limits.map(limitToProto) });
    },

    async listCreditPackages(req, ctx: HandlerContext) {
      if (req.includeInactive && principalOf(ctx).role !== "admin") throw invalidField("include_inactive", "only admin keys may list inactive packages");
      const r = await d.packages.list(req.includeInactive, req.pageSize, req.pageToken);
      return create(ListCreditPackagesResponseSchema, { creditPackages: r.packages.map(packageToProto), nextPageToken: r.nextPageToken });
    },

    async getCreditPackage(req) {
      return create(GetCreditPackageResponseSchema, { creditPackage: packageToProto(await d.packages.get(req.slug)) });
    },

    async createCreditPackage(req, ctx: HandlerContext) {
      return create(CreateCreditPackageResponseSchema, { creditPackage: packageToProto(await d.packages.create(packageInput(req.creditPackage), txOptions(ctx))) });
    },

    async updateCreditPackage(req, ctx: HandlerContext) {
      const r = await d.packages.update(packageInput(req.creditPackage), req.updateMask?.paths ?? [], txOptions(ctx));
      return create(UpdateCreditPackageResponseSchema, { creditPackage: packageToProto(r) });
    },
  };
}
