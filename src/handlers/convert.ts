/**
 * Conversions between generated proto types and domain types that more than
 * one handler uses. Handlers map; they hold no rules.
 */
import { create } from "@bufbuild/protobuf";
import { AuditEntrySchema, type AuditEntry } from "../../gen/billing/v1/common_pb.js";
import { DateSchema, type Date as ProtoDate } from "../../gen/google/type/date_pb.js";
import type { AuditRecord } from "../domain/audit.js";
import { timestampFromDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import type { HandlerContext } from "@connectrpc/connect";
import {
  BalanceSchema,
  CategoryBalanceSchema,
  CreditLotCategory,
  CreditLotSchema,
  CreditLotState,
  CreditTransactionSchema,
  CreditTransactionType,
  CreditUsageLogSchema,
  LotAllocationSchema,
  type Balance,
  type CreditLot,
  type CreditTransaction,
  type CreditUsageLog,
} from "../../gen/billing/v1/credit_service_pb.js";
import { PriceVersionState } from "../../gen/billing/v1/model_config_service_pb.js";
import type { VersionState, VersionTimes } from "../domain/models/versions.js";
import type { BalanceView, CreditLotView, LedgerEntry, LotCategory, LotState, TransactionOptions, TransactionType, UsageLogEntry } from "../domain/credits/types.js";
import { invalidField } from "../domain/errors.js";

/** The domain value of a proto enum; undefined for 0 (UNSPECIFIED); INVALID_ARGUMENT for unknown numbers. */
export function enumFromProto<P extends number, D>(table: [P, D][], value: P, field: string): D | undefined {
  if (value === 0) return undefined;
  const found = table.find(([p]) => p === value);
  if (!found) throw invalidField(field, `unknown enum value ${value}`);
  return found[1];
}

/** The domain values of a repeated proto enum filter; UNSPECIFIED and unknown numbers are rejected. */
export function enumsFromProto<P extends number, D>(table: [P, D][], values: P[], field: string): D[] {
  return values.map((value, i) => {
    const d = enumFromProto(table, value, `${field}[${i}]`);
    if (d === undefined) throw invalidField(`${field}[${i}]`, "must not be UNSPECIFIED");
    return d;
  });
}

/** The proto enum of a domain value. */
export function enumToProto<P extends number, D>(table: [P, D][], value: D): P {
  const found = table.find(([, d]) => d === value);
  if (!found) throw new Error(`no proto enum for ${String(value)}`);
  return found[0];
}

/** A google.type.Date for "YYYY-MM-DD"; unset for "". */
export function calendarDateToProto(iso: string): ProtoDate | undefined {
  if (!iso) return undefined;
  return create(DateSchema, { year: Number(iso.slice(0, 4)), month: Number(iso.slice(5, 7)), day: Number(iso.slice(8, 10)) });
}

/** An audit record as an AuditEntry. */
export function auditToProto(r: AuditRecord): AuditEntry {
  return create(AuditEntrySchema, {
    id: r.id,
    action: r.action,
    actor: r.actor,
    before: (r.before ?? undefined) as never,
    after: (r.after ?? undefined) as never,
    createdAt: ts(r.createdAt),
  });
}

/** Transaction options carrying the caller's remaining deadline. */
export function txOptions(ctx: HandlerContext): TransactionOptions {
  const ms = ctx.timeoutMs();
  return ms === undefined ? {} : { timeoutMs: ms };
}

/** A proto Timestamp, or undefined. */
export function ts(date: Date | undefined | null): Timestamp | undefined {
  return date ? timestampFromDate(date) : undefined;
}

/** google.protobuf.Timestamp's range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z. */
const MIN_SECONDS = -62_135_596_800n;
const MAX_SECONDS = 253_402_300_799n;

/**
 * A Date from an optional proto Timestamp: INVALID_ARGUMENT naming `field`
 * outside the Timestamp's range; sub-millisecond digits are dropped (never
 * rounded up past 9999-12-31).
 */
export function dateOf(t: Timestamp | undefined, field: string): Date | undefined {
  if (!t) return undefined;
  if (t.seconds < MIN_SECONDS || t.seconds > MAX_SECONDS || t.nanos < 0 || t.nanos > 999_999_999) {
    throw invalidField(field, "must be a timestamp from 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z");
  }
  return new Date(Number(t.seconds) * 1000 + Math.floor(t.nanos / 1_000_000));
}

export const TX_TYPES: [CreditTransactionType, TransactionType][] = [
  [CreditTransactionType.PURCHASE, "purchase"],
  [CreditTransactionType.SUBSCRIPTION, "subscription"],
  [CreditTransactionType.REFUND, "refund"],
  [CreditTransactionType.DEDUCTION, "deduction"],
  [CreditTransactionType.ADJUSTMENT, "adjustment"],
  [CreditTransactionType.EXPIRATION, "expiration"],
  [CreditTransactionType.VOID, "void"],
];

export const LOT_CATEGORIES: [CreditLotCategory, LotCategory][] = [
  [CreditLotCategory.PAID, "paid"],
  [CreditLotCategory.PROMOTIONAL, "promotional"],
  [CreditLotCategory.PLAN_ALLOWANCE, "plan_allowance"],
  [CreditLotCategory.ADJUSTMENT, "adjustment"],
];

export const LOT_STATES: [CreditLotState, LotState][] = [
  [CreditLotState.PENDING, "pending"],
  [CreditLotState.ACTIVE, "active"],
  [CreditLotState.EXHAUSTED, "exhausted"],
  [CreditLotState.EXPIRED, "expired"],
  [CreditLotState.VOIDED, "voided"],
];

export function lotToProto(l: CreditLotView): CreditLot {
  return create(CreditLotSchema, {
    id: l.id,
    accountId: l.accountId,
    category: enumToProto(LOT_CATEGORIES, l.category),
    state: enumToProto(LOT_STATES, l.state),
    amount: l.amount,
    remaining: l.remaining,
    priority: l.priority,
    effectiveAt: ts(l.effectiveAt),
    expiresAt: ts(l.expiresAt),
    paymentId: l.paymentId,
    description: l.description,
    createdAt: ts(l.createdAt),
    packageId: l.packageId,
    createdBy: l.createdBy,
    transactionId: l.transactionId,
  });
}

export function balanceToProto(b: BalanceView): Balance {
  return create(BalanceSchema, {
    accountId: b.accountId,
    balance: b.balance,
    reserved: b.reserved,
    available: b.available,
    updatedAt: ts(b.updatedAt),
    byCategory: (b.byCategory ?? []).map((c) => create(CategoryBalanceSchema, { category: enumToProto(LOT_CATEGORIES, c.category), amount: c.amount })),
    nextExpiringAmount: b.nextExpiringAmount ?? 0n,
    nextExpiresAt: ts(b.nextExpiresAt),
  });
}

export function transactionToProto(t: LedgerEntry): CreditTransaction {
  return create(CreditTransactionSchema, {
    id: t.id,
    accountId: t.accountId,
    type: enumToProto(TX_TYPES, t.type),
    amount: t.amount,
    balanceAfter: t.balanceAfter,
    description: t.description,
    metadata: t.metadata as never,
    paymentId: t.paymentId,
    createdAt: ts(t.createdAt),
    allocations: (t.allocations ?? []).map((a) => create(LotAllocationSchema, { lotId: a.lotId, amount: a.amount })),
  });
}

export function usageLogToProto(u: UsageLogEntry): CreditUsageLog {
  return create(CreditUsageLogSchema, {
    id: u.id,
    accountId: u.accountId,
    operationType: u.operationType,
    creditsUsed: u.creditsUsed,
    costUsd: u.costUsd,
    modelUsed: u.modelUsed,
    tokensInput: u.tokensInput,
    tokensOutput: u.tokensOutput,
    relatedObjectType: u.relatedObjectType,
    relatedObjectId: u.relatedObjectId,
    metadata: u.metadata as never,
    createdAt: ts(u.createdAt),
    costConfigVersionId: u.costConfigVersionId ?? "",
    modelPriceVersionId: u.modelPriceVersionId ?? "",
  });
}

const VERSION_STATES: [PriceVersionState, VersionState][] = [
  [PriceVersionState.SCHEDULED, "scheduled"],
  [PriceVersionState.IN_FORCE, "in_force"],
  [PriceVersionState.SUPERSEDED, "superseded"],
  [PriceVersionState.CANCELLED, "cancelled"],
];

/** The fields every price version message shares. */
export function versionTimesToProto(v: VersionTimes) {
  return {
    id: v.id,
    effectiveFrom: ts(v.effectiveFrom),
    effectiveUntil: ts(v.effectiveUntil),
    state: enumToProto(VERSION_STATES, v.state),
    backdated: v.backdated,
    createdBy: v.createdBy,
    createdAt: ts(v.createdAt),
    cancelledBy: v.cancelledBy,
    cancelledAt: ts(v.cancelledAt),
  };
}
