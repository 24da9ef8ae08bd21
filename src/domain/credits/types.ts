/**
 * The ledger's domain types: plain data, no proto, no SQL.
 */
export type TransactionType = "purchase" | "subscription" | "refund" | "deduction" | "adjustment";

export const TRANSACTION_TYPES: readonly TransactionType[] = ["purchase", "subscription", "refund", "deduction", "adjustment"];

export type JsonObject = { [key: string]: unknown };

/** An account's credits. */
export interface BalanceView {
  accountId: string;
  balance: bigint;
  reserved: bigint;
  available: bigint;
  updatedAt?: Date;
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
}
