/**
 * The ledger's domain types: plain data, no proto, no SQL.
 */
import type { JsonObject } from "../json.js";

/** Options of a domain call that opens a transaction (the caller's deadline), for handlers, which do not import src/db/. */
export type { TransactionOptions } from "../../db/transaction.js";

export type TransactionType = "purchase" | "subscription" | "refund" | "deduction" | "adjustment" | "expiration" | "void";

/** What kind of credits a lot holds. */
export type LotCategory = "paid" | "promotional" | "plan_allowance" | "adjustment";
/** Where a lot is in its life ("pending": active, but effective_at is ahead). */
export type LotState = "pending" | "active" | "exhausted" | "expired" | "voided";

/** Credits a debit took from one lot. */
export interface Allocation {
  lotId: string;
  amount: bigint;
}

/** A lot of credits. */
export interface CreditLotView {
  id: string;
  accountId: string;
  category: LotCategory;
  state: LotState;
  amount: bigint;
  remaining: bigint;
  priority: number;
  effectiveAt?: Date;
  expiresAt?: Date;
  paymentId: string;
  packageId: string;
  createdBy: string;
  description: string;
  transactionId: string;
  createdAt: Date;
}

/** An account's credits. */
export interface BalanceView {
  accountId: string;
  balance: bigint;
  reserved: bigint;
  available: bigint;
  updatedAt?: Date;
  /** GetBalance / WatchBalance only: credits left by category, and the next expiry. */
  byCategory?: { category: LotCategory; amount: bigint }[];
  nextExpiringAmount?: bigint;
  nextExpiresAt?: Date;
}

/** One immutable ledger entry. */
export interface LedgerEntry {
  id: string;
  accountId: string;
  type: TransactionType;
  amount: bigint;
  balanceAfter: bigint;
  description: string;
  metadata: JsonObject;
  paymentId: string;
  createdAt: Date;
  /** The lots a debit drew from; empty for additions. */
  allocations: Allocation[];
}

/** What one AI operation cost. */
export interface UsageLogEntry {
  id: string;
  accountId: string;
  operationType: string;
  creditsUsed: bigint;
  /** Scale-4 decimal string; empty when unknown. */
  costUsd: string;
  modelUsed: string;
  tokensInput: bigint;
  tokensOutput: bigint;
  relatedObjectType: string;
  relatedObjectId: string;
  metadata: JsonObject;
  createdAt: Date;
  /** The price versions it was priced with ("" when unknown). */
  costConfigVersionId?: string;
  modelPriceVersionId?: string;
}

/** What an operation used; credits > 0 charges exactly that. */
export interface UsageInput {
  credits: bigint;
  tokensInput: bigint;
  tokensOutput: bigint;
  model: string;
  imageCount: bigint;
}

/** The result of a grant or an adjustment. */
export interface GrantResult {
  transaction: LedgerEntry;
  balance: BalanceView;
  /** The lot a grant created. */
  lot?: CreditLotView;
}

/** The result of a deduction. */
export interface DeductResult extends GrantResult {
  usageLog: UsageLogEntry;
}

/** What a usage log records about one charged operation (besides the credits). */
export interface UsageRecord {
  operationType: string;
  /** Scale-4 USD; "" when unknown. */
  costUsd: string;
  model: string;
  tokensInput: bigint;
  tokensOutput: bigint;
  relatedObjectType: string;
  relatedObjectId: string;
  /** The price versions it was priced with ("" when none). */
  costConfigVersionId: string;
  modelPriceVersionId: string;
}
