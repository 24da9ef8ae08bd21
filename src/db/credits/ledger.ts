/**
 * credit_transactions: the credit statement (balance, ledger entry and lot
 * written together) and ledger listings. Debits are billing_debit's
 * (src/db/credits/debit.ts).
 */
import type { Sequelize, Transaction } from "sequelize";
import { row, rows } from "../sql.js";
import { PENDING, RESERVED } from "./accounts.js";
import { LOT_COLUMNS, type LotRow } from "./lots.js";

/** A credit to write: the ledger entry and the lot it creates. */
export interface CreditRow {
  accountId: string;
  amount: bigint;
  type: string;
  description: string;
  metadata: object;
  paymentId: string | null;
  category: string;
  priority: number;
  effectiveAt: Date | undefined;
  expiresAt: Date | undefined;
  packageId: string | null;
  createdBy: string;
}

/** What the credit statement wrote: the entry, the account's state after it, and the lot. */
export type CreditWritten = { id: string; balance_after: string; created_at: Date; updated_at: Date; reserved: string; pending: string } & LotRow;

/**
 * Adds `c.amount` to the account's balance (creating the account), writes
 * its ledger entry and its lot, in one statement inside `t`.
 */
export async function insertCredit(db: Sequelize, t: Transaction, c: CreditRow): Promise<CreditWritten> {
  const written = await row<CreditWritten>(
    db,
    `WITH acct AS (
       INSERT INTO billing_accounts AS a (account_id, balance) VALUES ($1, $2)
       ON CONFLICT (account_id) DO UPDATE SET balance = a.balance + EXCLUDED.balance, updated_at = now()
       RETURNING a.balance, a.updated_at),
     tx AS (
       INSERT INTO credit_transactions (account_id, type, amount, balance_after, description, metadata, payment_id)
       SELECT $1, $3, $2, acct.balance, $4, $5::jsonb, $6 FROM acct
       RETURNING id, balance_after, created_at),
     lot AS (
       INSERT INTO credit_lots (account_id, category, amount, remaining, priority, effective_at, expires_at,
                                payment_id, package_id, created_by, description, transaction_id, created_at)
       SELECT $1, $7, $2, $2, $8, $9, $10, $6, $11, $12, $4, tx.id, tx.created_at FROM tx
       RETURNING ${LOT_COLUMNS})
     SELECT tx.id, tx.balance_after, tx.created_at, acct.updated_at, ${RESERVED} AS reserved,
            ${PENDING} + CASE WHEN $9::timestamptz > now() THEN $2::bigint ELSE 0 END AS pending, lot.*
     FROM tx, acct, lot`,
    [
      c.accountId,
      c.amount.toString(),
      c.type,
      c.description,
      JSON.stringify(c.metadata),
      c.paymentId,
      c.category,
      c.priority,
      c.effectiveAt?.toISOString() ?? null,
      c.expiresAt?.toISOString() ?? null,
      c.packageId,
      c.createdBy,
    ],
    t,
  );
  return written!;
}

/** A ledger entry as stored. */
export interface TransactionRow {
  id: string;
  account_id: string;
  type: string;
  amount: string;
  balance_after: string;
  description: string;
  metadata: Record<string, unknown>;
  payment_id: string | null;
  created_at: Date;
  allocations: { lot_id: string; amount: string }[];
}

/** Which entries a listing wants: types (empty: any) and a [start, end) window. */
export interface TransactionFilter {
  accountId: string;
  types: string[];
  startTime?: Date;
  endTime?: Date;
}

/** One page of an account's ledger, newest first (keyset on id): `limit` rows with ids below `afterId`. */
export function listTransactions(db: Sequelize, filter: TransactionFilter, afterId: string | undefined, limit: number): Promise<TransactionRow[]> {
  const conditions = ["account_id = $1"];
  const bind: unknown[] = [filter.accountId];
  if (filter.types.length > 0) {
    bind.push(filter.types);
    conditions.push(`type = ANY($${bind.length}::text[])`);
  }
  if (filter.startTime) {
    bind.push(filter.startTime.toISOString());
    conditions.push(`created_at >= $${bind.length}`);
  }
  if (filter.endTime) {
    bind.push(filter.endTime.toISOString());
    conditions.push(`created_at < $${bind.length}`);
  }
  if (afterId !== undefined) {
    bind.push(afterId);
    conditions.push(`id < $${bind.length}`);
  }
  bind.push(limit);
  return rows<TransactionRow>(
    db,
    `SELECT id, account_id, type, amount, balance_after, description, metadata, payment_id, created_at, allocations
     FROM credit_transactions WHERE ${conditions.join(" AND ")} ORDER BY id DESC LIMIT $${bind.length}`,
    bind,
  );
}
