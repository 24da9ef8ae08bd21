/**
 * The TypeScript side of billing_debit (src/db/functions/billing_debit.sql),
 * the one place credits leave the ledger: how requests are sent to it and
 * how its debit records are read back. Every debit (coalesced and single
 * deductions, reservation commits, negative adjustments, refunds, voids,
 * expiries) goes through `runDebits`; a keyed request's stored idempotent
 * response is that same record, read by the same `debitResultOf`.
 */
import type { Sequelize, Transaction } from "sequelize";
import { callDebit, callExpire, type DebitRow } from "../../db/credits/debit.js";
import { decodeStored } from "../idempotency.js";
import type { JsonObject } from "../json.js";
import type { Allocation, DeductResult, GrantResult, TransactionType, UsageLogEntry, UsageRecord } from "./types.js";

/** One debit for billing_debit. */
export interface DebitRequest {
  accountId: string;
  /** Credits to take (ignored with mode "all"). */
  credits: bigint;
  type: Extract<TransactionType, "deduction" | "adjustment" | "refund" | "void">;
  description: string;
  metadata: JsonObject;
  paymentId?: string | null;
  /** strict: all or nothing (default); partial: as much as fits; all: the whole of `lotId`. */
  mode?: "strict" | "partial" | "all";
  /** Draw only from this lot. */
  lotId?: string;
  /** Idempotency: read under the account lock; the record is stored under it, in the same statement. */
  key?: string;
  hash?: string;
  /** Also write a usage log. */
  usage?: UsageRecord;
}

/** What billing_debit answered for one request. */
type DebitOutcome =
  | { outcome: "ok" | "replay"; result: DebitResult }
  | { outcome: "insufficient"; available: bigint }
  | { outcome: "empty" | "reused" | "taken" };

/** A debit's ledger entry and balance, and its usage log when it charged usage. */
export type DebitResult = GrantResult & { usageLog?: UsageLogEntry };

/**
 * Applies `requests` with one statement, in the caller's transaction `t`
 * or, without one, as its own transaction (one round trip, one commit).
 * Outcomes follow the order of `requests`.
 */
export async function runDebits(sequelize: Sequelize, method: string, requests: DebitRequest[], t?: Transaction, onExpired?: OnExpired): Promise<DebitOutcome[]> {
  const rows = await callDebit(sequelize, method, debitPayload(requests), t);
  const out: DebitOutcome[] = new Array(requests.length);
  for (const row of rows) {
    if (row.ord === 0) expiredLot(row, onExpired);
    else out[row.ord - 1] = outcomeOf(row);
  }
  return out;
}

/** Told of each lot that expired in a statement: the account and the credits that left its balance. */
type OnExpired = (accountId: string, credits: bigint) => void;

/** Brings accounts up to date: their lots past expires_at leave the balance (EXPIRATION entries). */
export async function expireDueLots(sequelize: Sequelize, accountIds: string[], t?: Transaction, onExpired?: OnExpired): Promise<void> {
  const rows = await callExpire(sequelize, accountIds, t);
  for (const row of rows) if (row.ord === 0) expiredLot(row, onExpired);
}

/** Tells `onExpired` of a lot that expired (a row with ord 0). */
function expiredLot(row: DebitRow, onExpired: OnExpired | undefined): void {
  onExpired?.(String(row.detail!.account_id), BigInt(String(row.detail!.amount)));
}

function debitPayload(requests: DebitRequest[]): string {
  return JSON.stringify(
    requests.map((r) => ({
      account: r.accountId,
      credits: r.credits.toString(),
      type: r.type,
      description: r.description,
      metadata: r.metadata,
      payment_id: r.paymentId || null,
      mode: r.mode ?? "strict",
      lot: r.lotId ?? null,
      key: r.key ?? null,
      hash: r.hash ?? null,
      usage: r.usage
        ? {
            operation: r.usage.operationType,
            cost: r.usage.costUsd,
            model: r.usage.model,
            tokens_in: r.usage.tokensInput.toString(),
            tokens_out: r.usage.tokensOutput.toString(),
            related_type: r.usage.relatedObjectType,
            related_id: r.usage.relatedObjectId,
            cost_version: r.usage.costConfigVersionId,
            model_version: r.usage.modelPriceVersionId,
          }
        : null,
    })),
  );
}

function outcomeOf(row: DebitRow): DebitOutcome {
  switch (row.outcome) {
    case "ok":
    case "replay":
      return { outcome: row.outcome, result: debitResultOf(row.detail!) };
    case "insufficient":
      return { outcome: "insufficient", available: BigInt(String(row.detail!.available)) };
    case "empty":
    case "reused":
    case "taken":
      return { outcome: row.outcome };
    default:
      throw new Error(`billing_debit answered an unknown outcome ${row.outcome}`);
  }
}

/** Reads a debit record (as billing_debit writes it, live or stored). */
function debitResultOf(d: Record<string, unknown>): DebitResult {
  // Deductions stored before credit lots (kept 24 hours) used the general stored encoding.
  if ("transaction" in d) return decodeStored(d) as DeductResult;
  const createdAt = new Date(String(d.created_at));
  const accountId = String(d.account_id);
  const metadata = (d.metadata ?? {}) as JsonObject;
  const amount = BigInt(String(d.amount));
  const balanceAfter = BigInt(String(d.balance_after));
  const result: DebitResult = {
    transaction: {
      id: String(d.transaction_id),
      accountId,
      type: d.type as TransactionType,
      amount,
      balanceAfter,
      description: String(d.description ?? ""),
      metadata,
      paymentId: typeof d.payment_id === "string" ? d.payment_id : "",
      createdAt,
      allocations: ((d.allocations ?? []) as { lot_id: string; amount: string }[]).map((a): Allocation => ({ lotId: a.lot_id, amount: BigInt(a.amount) })),
    },
    balance: { accountId, balance: balanceAfter, reserved: BigInt(String(d.reserved)), available: BigInt(String(d.available)), updatedAt: createdAt },
  };
  if (d.usage_log_id !== null && d.usage_log_id !== undefined) {
    result.usageLog = {
      id: String(d.usage_log_id),
      accountId,
      operationType: String(d.operation_type),
      creditsUsed: -amount,
      costUsd: String(d.cost_usd ?? ""),
      modelUsed: String(d.model ?? ""),
      tokensInput: BigInt(String(d.tokens_input ?? "0")),
      tokensOutput: BigInt(String(d.tokens_output ?? "0")),
      relatedObjectType: String(d.related_object_type ?? ""),
      relatedObjectId: String(d.related_object_id ?? ""),
      metadata,
      createdAt,
      costConfigVersionId: String(d.cost_config_version_id ?? ""),
      modelPriceVersionId: String(d.model_price_version_id ?? ""),
    };
  }
  return result;
}
