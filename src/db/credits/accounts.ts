/**
 * billing_accounts: an account's balance row (the lock that orders its
 * changes) read together with its holds and pending credits, which
 * billing_reserved / billing_pending (src/db/functions/billing_debit.sql)
 * define once for these reads and for billing_debit's loop.
 */
import type { Sequelize, Transaction } from "sequelize";
import { row, run } from "../sql.js";
import { DUE_LOT, OPEN_LOT } from "./lots.js";

/** Credits held by open holds of account $1 (inlined by the planner: a set-returning SQL function). */
export const RESERVED = `(SELECT reserved FROM billing_reserved($1))`;
/** Credits of account $1 in lots not yet effective. */
export const PENDING = `(SELECT pending FROM billing_pending($1))`;

/** An account's balance, holds and pending credits; balance and updated_at NULL for an account never credited. */
export interface AccountStateRow {
  balance: string | null;
  updated_at: Date | null;
  reserved: string;
  pending: string;
}

/** AccountStateRow plus the credits left by category, the next expiry, and whether a lot is due to expire. */
export interface BalanceRow extends AccountStateRow {
  by_category: { category: string; amount: string }[] | null;
  next_expiry: { at: string; amount: string } | null;
  due: boolean;
}

const ACCOUNT_STATE_SQL = `SELECT a.balance, a.updated_at, ${RESERVED} AS reserved, ${PENDING} AS pending
  FROM (SELECT 1) one LEFT JOIN billing_accounts a ON a.account_id = $1`;

const BALANCE_SQL = `SELECT a.balance, a.updated_at, ${RESERVED} AS reserved, ${PENDING} AS pending,
    (SELECT json_agg(json_build_object('category', c.category, 'amount', c.amount::text) ORDER BY c.category)
       FROM (SELECT category, SUM(remaining) AS amount FROM credit_lots
             WHERE account_id = $1 AND ${OPEN_LOT} GROUP BY category) c) AS by_category,
    (SELECT json_build_object('at', x.expires_at, 'amount', x.amount::text)
       FROM (SELECT expires_at, SUM(remaining) AS amount FROM credit_lots
             WHERE account_id = $1 AND ${OPEN_LOT} AND expires_at IS NOT NULL
             GROUP BY expires_at ORDER BY expires_at LIMIT 1) x) AS next_expiry,
    EXISTS (SELECT 1 FROM credit_lots WHERE account_id = $1 AND ${DUE_LOT}) AS due
  FROM (SELECT 1) one LEFT JOIN billing_accounts a ON a.account_id = $1`;

/** The account's balance, holds and pending credits (inside `t` when given). */
export async function accountState(db: Sequelize, accountId: string, t?: Transaction): Promise<AccountStateRow> {
  return (await row<AccountStateRow>(db, ACCOUNT_STATE_SQL, [accountId], t))!;
}

/** The account's state with its breakdown by category and next expiry (GetBalance). */
export async function balanceSnapshot(db: Sequelize, accountId: string): Promise<BalanceRow> {
  return (await row<BalanceRow>(db, BALANCE_SQL, [accountId]))!;
}

/** Locks the account's row inside `t` (nothing when the account was never credited). */
export function lockAccount(db: Sequelize, t: Transaction, accountId: string): Promise<void> {
  return run(db, `SELECT 1 FROM billing_accounts WHERE account_id = $1 FOR UPDATE`, [accountId], t);
}
