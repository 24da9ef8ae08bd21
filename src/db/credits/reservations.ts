/**
 * credit_reservations: holds, their settlement and the expiry sweep. The
 * credits open holds take from the available balance are billing_reserved's
 * (src/db/functions/billing_debit.sql).
 */
import type { Sequelize, Transaction } from "sequelize";
import { row, rows } from "../sql.js";

/** A reservation as stored, with whether it is past expires_at at the statement's time. */
export interface ReservationRow {
  id: string;
  account_id: string;
  operation_type: string;
  credits: string;
  status: "active" | "committed" | "released" | "expired";
  credits_committed: string;
  expires_at: Date;
  created_at: Date;
  settled_at: Date | null;
  expired: boolean;
  cost_config_version_id: string | null;
  priced_at: Date | null;
}

/** A new hold of `credits` for `ttlSeconds`, priced with `costVersionId` (null: none) as of `pricedAt`. */
export async function insertReservation(
  db: Sequelize,
  t: Transaction,
  r: { accountId: string; operationType: string; credits: bigint; ttlSeconds: number; costVersionId: string | null; pricedAt: Date },
): Promise<ReservationRow> {
  const inserted = await row<ReservationRow>(
    db,
    `INSERT INTO credit_reservations (account_id, operation_type, credits, expires_at, cost_config_version_id, priced_at)
     VALUES ($1, $2, $3, now() + make_interval(secs => $4), $5, $6) RETURNING *, false AS expired`,
    [r.accountId, r.operationType, r.credits.toString(), r.ttlSeconds, r.costVersionId, r.pricedAt.toISOString()],
    t,
  );
  return inserted!;
}

/** A reservation by id, if it exists. */
export function findReservation(db: Sequelize, id: string): Promise<ReservationRow | undefined> {
  return row<ReservationRow>(db, `SELECT *, expires_at <= now() AS expired FROM credit_reservations WHERE id = $1`, [id]);
}

/** Locks an account's reservation inside `t`. */
export function lockReservation(db: Sequelize, t: Transaction, accountId: string, id: string): Promise<ReservationRow | undefined> {
  return row<ReservationRow>(db, `SELECT *, expires_at <= now() AS expired FROM credit_reservations WHERE account_id = $1 AND id = $2 FOR UPDATE`, [accountId, id], t);
}

/** Settles a reservation: its new status and, for a commit, the credits charged. */
export async function settleReservation(
  db: Sequelize,
  t: Transaction,
  accountId: string,
  id: string,
  status: ReservationRow["status"],
  creditsCommitted?: bigint,
): Promise<ReservationRow> {
  const settled = await row<ReservationRow>(
    db,
    `UPDATE credit_reservations SET status = $3, credits_committed = coalesce($4, credits_committed), settled_at = now()
     WHERE account_id = $1 AND id = $2 RETURNING *, false AS expired`,
    [accountId, id, status, creditsCommitted?.toString() ?? null],
    t,
  );
  return settled!;
}

/**
 * Marks up to `limit` holds past expires_at EXPIRED, skipping rows another
 * transaction holds; returns how many were marked.
 */
export async function expireDueReservations(db: Sequelize, limit: number): Promise<number> {
  const marked = await rows(
    db,
    `UPDATE credit_reservations r SET status = 'expired', settled_at = now()
     FROM (SELECT account_id, id FROM credit_reservations WHERE status = 'active' AND expires_at <= now()
           ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED) due
     WHERE r.account_id = due.account_id AND r.id = due.id RETURNING r.id`,
    [limit],
  );
  return marked.length;
}
