/**
 * credit_lots: reads, voids, the expiry sweep's accounts and the
 * expiring-soon warnings. Lots are written by billing_debit (debits,
 * expiries) and by the credit statement (src/db/credits/ledger.ts).
 */
import type { Sequelize, Transaction } from "sequelize";
import { row, rows } from "../sql.js";

/** Lots with credits left: the ones that count in a balance. */
export const OPEN_LOT = `state = 'active' AND remaining > 0`;
/** Open lots past their expiry: what the next read or debit of their account expires first. */
export const DUE_LOT = `${OPEN_LOT} AND expires_at <= now()`;

/** The columns a lot is read with (RETURNING or SELECT), `pending` computed at the statement's time. */
export const LOT_COLUMNS = `id AS lot_id, account_id AS lot_account_id, category AS lot_category, state AS lot_state,
  amount AS lot_amount, remaining AS lot_remaining, priority AS lot_priority, effective_at AS lot_effective_at,
  expires_at AS lot_expires_at, payment_id AS lot_payment_id, package_id AS lot_package_id, created_by AS lot_created_by,
  description AS lot_description, transaction_id AS lot_transaction_id, created_at AS lot_created_at,
  (state = 'active' AND effective_at IS NOT NULL AND effective_at > now()) AS lot_pending`;

/** A lot as LOT_COLUMNS reads it. */
export interface LotRow {
  lot_id: string;
  lot_account_id: string;
  lot_category: "paid" | "promotional" | "plan_allowance" | "adjustment";
  lot_state: "active" | "exhausted" | "expired" | "voided";
  lot_amount: string;
  lot_remaining: string;
  lot_priority: number;
  lot_effective_at: Date | null;
  lot_expires_at: Date | null;
  lot_payment_id: string | null;
  lot_package_id: string | null;
  lot_created_by: string;
  lot_description: string;
  lot_transaction_id: string | null;
  lot_created_at: Date;
  lot_pending: boolean;
}

/** Which lots a listing wants: categories and states (empty: any); "pending" and "active" split active lots at effective_at. */
export interface LotFilter {
  accountId: string;
  categories: string[];
  states: string[];
}

/** One page of an account's lots, newest first (keyset on created_at, id): `limit` rows after `after`. */
export function listLots(db: Sequelize, filter: LotFilter, after: [string, string] | undefined, limit: number): Promise<(LotRow & { page_at: string })[]> {
  const conditions = ["account_id = $1"];
  const bind: unknown[] = [filter.accountId];
  if (filter.categories.length > 0) {
    bind.push(filter.categories);
    conditions.push(`category = ANY($${bind.length}::text[])`);
  }
  if (filter.states.length > 0) {
    const ors = filter.states.map((s) => {
      if (s === "pending") return "(state = 'active' AND effective_at > now())";
      if (s === "active") return "(state = 'active' AND (effective_at IS NULL OR effective_at <= now()))";
      bind.push(s);
      return `state = $${bind.length}`;
    });
    conditions.push(`(${ors.join(" OR ")})`);
  }
  if (after) {
    bind.push(after[0], after[1]);
    conditions.push(`(created_at, id) < ($${bind.length - 1}::timestamptz, $${bind.length}::uuid)`);
  }
  bind.push(limit);
  return rows(
    db,
    `SELECT ${LOT_COLUMNS}, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS page_at
     FROM credit_lots WHERE ${conditions.join(" AND ")} ORDER BY created_at DESC, id DESC LIMIT $${bind.length}`,
    bind,
  );
}

/** The account a lot belongs to, if the lot exists. */
export async function lotAccount(db: Sequelize, lotId: string): Promise<string | undefined> {
  return (await row<{ account_id: string }>(db, `SELECT account_id FROM credit_lots WHERE id = $1`, [lotId]))?.account_id;
}

/** Locks an account's lot inside `t`. */
export function lockLot(db: Sequelize, t: Transaction, accountId: string, lotId: string): Promise<LotRow | undefined> {
  return row<LotRow>(db, `SELECT ${LOT_COLUMNS} FROM credit_lots WHERE account_id = $1 AND id = $2 FOR UPDATE`, [accountId, lotId], t);
}

/** Marks a lot voided with nothing left. */
export async function markLotVoided(db: Sequelize, t: Transaction, accountId: string, lotId: string): Promise<LotRow> {
  return (await row<LotRow>(db, `UPDATE credit_lots SET state = 'voided', remaining = 0, closed_at = now() WHERE account_id = $1 AND id = $2 RETURNING ${LOT_COLUMNS}`, [accountId, lotId], t))!;
}

/** Whether the account has a lot due to expire (a cheap index check, no lock). */
export async function hasDueLots(db: Sequelize, accountId: string): Promise<boolean> {
  return (await row<{ due: boolean }>(db, `SELECT EXISTS (SELECT 1 FROM credit_lots WHERE account_id = $1 AND ${DUE_LOT}) AS due`, [accountId]))?.due ?? false;
}

/** Up to `limit` accounts with lots due to expire, in account order. */
export async function accountsWithDueLots(db: Sequelize, limit: number): Promise<string[]> {
  const due = await rows<{ account_id: string }>(db, `SELECT DISTINCT account_id FROM credit_lots WHERE ${DUE_LOT} ORDER BY account_id LIMIT $1`, [limit]);
  return due.map((d) => d.account_id);
}

/**
 * Emits credit_lot.expiring_soon (deduplicated by lot id) for up to `limit`
 * open lots expiring within `leadSeconds`; returns how many were emitted.
 */
export async function emitExpiringSoon(db: Sequelize, leadSeconds: number, limit: number): Promise<number> {
  const emitted = await rows(
    db,
    `WITH due AS (
       SELECT account_id, id, remaining, expires_at FROM credit_lots
       WHERE ${OPEN_LOT} AND expires_at > now() AND expires_at <= now() + make_interval(secs => $1)
         AND NOT EXISTS (SELECT 1 FROM billing_events e WHERE e.account_id = credit_lots.account_id
                           AND e.type = 'credit_lot.expiring_soon' AND e.dedupe_key = credit_lots.id::text)
       ORDER BY expires_at LIMIT $2)
     SELECT billing_emit(account_id, 'credit_lot.expiring_soon',
              jsonb_build_object('lot_id', id, 'remaining', remaining, 'expires_at', expires_at), id::text) FROM due`,
    [leadSeconds, limit],
  );
  return emitted.length;
}
