/**
 * The payments adapter: payments, their history (payment_history) and the
 * provider references they claim (provider_payment_refs). SQL only; the
 * rules live in src/domain/payments/payments.ts.
 */
import type { Sequelize, Transaction } from "sequelize";
import { row, rows } from "../sql.js";

/** A payment row: NUMERIC and BIGINT columns as strings. */
export interface PaymentRow {
  account_id: string;
  id: string;
  invoice_id: string;
  amount: string;
  currency: string;
  status: string;
  payment_method: string;
  provider: string | null;
  provider_payment_id: string | null;
  provider_secondary_id: string | null;
  status_before_dispute: string | null;
  manual_reference: string;
  manual_notes: string;
  admin_notes: string;
  approved_by: string | null;
  approved_at: Date | null;
  processed_at: Date | null;
  failed_at: Date | null;
  refunded_at: Date | null;
  failure_reason: string;
  metadata: Record<string, unknown>;
  credits_granted: string;
  credits_revoked: string;
  credits_shortfall: string;
  amount_refunded: string;
  created_at: Date;
  updated_at: Date;
}

/** A payment_history row (id is BIGINT, as a string). */
export interface PaymentHistoryRow {
  id: string;
  payment_id: string;
  from_status: string | null;
  to_status: string;
  actor: string;
  note: string;
  created_at: Date;
}

/** Which payment: its account and id. */
type PaymentKey = Pick<PaymentRow, "account_id" | "id">;

/** What a new payment holds; the database fills in the rest (status PENDING_APPROVAL unless given). */
export interface NewPayment {
  id?: string;
  account_id: string;
  invoice_id: string;
  amount: string;
  currency: string;
  payment_method: string;
  status?: string;
  manual_reference?: string;
  manual_notes?: string;
  failure_reason?: string;
  failed_at?: Date | null;
  provider?: string | null;
  provider_payment_id?: string | null;
  provider_secondary_id?: string | null;
}

/** Inserts a payment. */
export async function insertPayment(db: Sequelize, t: Transaction, v: NewPayment): Promise<PaymentRow> {
  return (await row<PaymentRow>(
    db,
    `INSERT INTO payments (id, account_id, invoice_id, amount, currency, payment_method, status, manual_reference, manual_notes,
       failure_reason, failed_at, provider, provider_payment_id, provider_secondary_id)
     VALUES (COALESCE($1::uuid, gen_random_uuid()), $2, $3, $4, $5, $6, COALESCE($7, 'pending_approval'), $8, $9, $10, $11, $12, $13, $14)
     RETURNING *`,
    [
      v.id ?? null, v.account_id, v.invoice_id, v.amount, v.currency, v.payment_method, v.status ?? null, v.manual_reference ?? "", v.manual_notes ?? "",
      v.failure_reason ?? "", v.failed_at ?? null, v.provider ?? null, v.provider_payment_id ?? null, v.provider_secondary_id ?? null,
    ],
    t,
  ))!;
}

/** A payment by id, or undefined. */
export function findPayment(db: Sequelize, id: string): Promise<PaymentRow | undefined> {
  return row<PaymentRow>(db, `SELECT * FROM payments WHERE id = $1`, [id]);
}

/** A payment locked FOR UPDATE in `t`, or undefined. */
export function lockPayment(db: Sequelize, t: Transaction, accountId: string, id: string): Promise<PaymentRow | undefined> {
  return row<PaymentRow>(db, `SELECT * FROM payments WHERE account_id = $1 AND id = $2 FOR UPDATE`, [accountId, id], t);
}

/** How many payments of an invoice await approval. */
export async function countAwaitingApproval(db: Sequelize, t: Transaction, accountId: string, invoiceId: string): Promise<number> {
  const r = await row<{ n: number }>(db, `SELECT count(*)::int AS n FROM payments WHERE account_id = $1 AND invoice_id = $2 AND status = 'pending_approval'`, [accountId, invoiceId], t);
  return r!.n;
}

export interface PaymentFilters {
  accountId: string;
  statuses: string[];
  methods: string[];
}

/** Payments newest first (created_at, id), after a keyset position, `limit` at most; each with its position's timestamp as text. */
export function listPayments(db: Sequelize, f: PaymentFilters, after: { createdAt: string; id: string } | undefined, limit: number): Promise<(PaymentRow & { created_key: string })[]> {
  const where: string[] = [];
  const bind: unknown[] = [];
  if (f.accountId) where.push(`account_id = $${bind.push(f.accountId)}`);
  if (f.statuses.length) where.push(`status = ANY($${bind.push(f.statuses)}::text[])`);
  if (f.methods.length) where.push(`payment_method = ANY($${bind.push(f.methods)}::text[])`);
  if (after) where.push(`(created_at, id) < ($${bind.push(after.createdAt)}::timestamptz, $${bind.push(after.id)}::uuid)`);
  return rows(
    db,
    `SELECT *, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS created_key FROM payments
     ${where.length ? "WHERE " + where.join(" AND ") : ""} ORDER BY created_at DESC, id DESC LIMIT $${bind.push(limit)}`,
    bind,
  );
}

/** Sets columns of one payment (`sets` binds from $3 on), with updated_at; the row as it is after. */
async function updatePayment(db: Sequelize, t: Transaction, p: PaymentKey, sets: string, values: unknown[]): Promise<PaymentRow> {
  return (await row<PaymentRow>(db, `UPDATE payments SET ${sets}, updated_at = now() WHERE account_id = $1 AND id = $2 RETURNING *`, [p.account_id, p.id, ...values], t))!;
}

/** Records an admin's approval (the status changes when the payment settles). */
export function setApproval(db: Sequelize, t: Transaction, p: PaymentKey, v: { adminNotes: string; approvedBy: string; approvedAt: Date }): Promise<PaymentRow> {
  return updatePayment(db, t, p, `admin_notes = $3, approved_by = $4, approved_at = $5`, [v.adminNotes, v.approvedBy, v.approvedAt]);
}

/** FAILED, with the reason and time. */
export function setFailed(db: Sequelize, t: Transaction, p: PaymentKey, reason: string, failedAt: Date): Promise<PaymentRow> {
  return updatePayment(db, t, p, `status = 'failed', failure_reason = $3, failed_at = $4`, [reason, failedAt]);
}

/** What a provider charged for a payment this time. */
export function setCharge(db: Sequelize, t: Transaction, p: PaymentKey, v: { amount: string; currency: string; providerSecondaryId: string | null }): Promise<PaymentRow> {
  return updatePayment(db, t, p, `amount = $3, currency = $4, provider_secondary_id = $5`, [v.amount, v.currency, v.providerSecondaryId]);
}

/** SUCCEEDED at `processedAt`, with the credits it granted. */
export function setSucceeded(db: Sequelize, t: Transaction, p: PaymentKey, processedAt: Date, creditsGranted: string): Promise<PaymentRow> {
  return updatePayment(db, t, p, `status = 'succeeded', processed_at = $3, credits_granted = $4`, [processedAt, creditsGranted]);
}

/** A dispute opened or closed: the status, the status to return to, and the metadata. */
export function setDispute(db: Sequelize, t: Transaction, p: PaymentKey, v: { status: string; statusBeforeDispute: string | null; metadata: Record<string, unknown> }): Promise<PaymentRow> {
  return updatePayment(db, t, p, `status = $3, status_before_dispute = $4, metadata = $5::jsonb`, [v.status, v.statusBeforeDispute, JSON.stringify(v.metadata)]);
}

/** A refund recorded: statuses, amounts refunded, credits revoked and short, and the metadata. */
export function setRefund(
  db: Sequelize,
  t: Transaction,
  p: PaymentKey,
  v: { status: string; statusBeforeDispute: string | null; refundedAt: Date; amountRefunded: string; creditsRevoked: string; creditsShortfall: string; metadata: Record<string, unknown> },
): Promise<PaymentRow> {
  return updatePayment(
    db,
    t,
    p,
    `status = $3, status_before_dispute = $4, refunded_at = $5, amount_refunded = $6, credits_revoked = $7, credits_shortfall = $8, metadata = $9::jsonb`,
    [v.status, v.statusBeforeDispute, v.refundedAt, v.amountRefunded, v.creditsRevoked, v.creditsShortfall, JSON.stringify(v.metadata)],
  );
}

/** Appends a state change to a payment's history. */
export async function insertHistory(
  db: Sequelize,
  t: Transaction,
  v: { account_id: string; payment_id: string; from_status: string | null; to_status: string; actor: string; note: string; snapshot: Record<string, unknown> },
): Promise<void> {
  await rows(
    db,
    `INSERT INTO payment_history (account_id, payment_id, from_status, to_status, actor, note, snapshot) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb) RETURNING id`,
    [v.account_id, v.payment_id, v.from_status, v.to_status, v.actor, v.note, JSON.stringify(v.snapshot)],
    t,
  );
}

/** A payment's history newest first, entries before `beforeId` (a BIGINT as digits), `limit` at most. */
export function listHistory(db: Sequelize, p: PaymentKey, beforeId: string | undefined, limit: number): Promise<PaymentHistoryRow[]> {
  return rows<PaymentHistoryRow>(
    db,
    `SELECT id, payment_id, from_status, to_status, actor, note, created_at FROM payment_history
     WHERE account_id = $1 AND payment_id = $2 ${beforeId !== undefined ? "AND id < $4" : ""} ORDER BY id DESC LIMIT $3`,
    beforeId !== undefined ? [p.account_id, p.id, limit, beforeId] : [p.account_id, p.id, limit],
  );
}

/** The payment a provider reference belongs to (through its global claim), or undefined. */
export function paymentByProviderRef(db: Sequelize, t: Transaction, provider: string, reference: string): Promise<PaymentRow | undefined> {
  return row<PaymentRow>(
    db,
    `SELECT p.* FROM provider_payment_refs r JOIN payments p ON p.account_id = r.account_id AND p.id = r.payment_id
     WHERE r.provider = $1 AND r.provider_payment_id = $2`,
    [provider, reference],
    t,
  );
}

/** Claims a provider reference for a payment; false when another payment holds it (a racing claim waits for the holder's transaction). */
export async function claimProviderRef(db: Sequelize, t: Transaction, provider: string, reference: string, accountId: string, paymentId: string): Promise<boolean> {
  const claimed = await rows(
    db,
    `INSERT INTO provider_payment_refs (provider, provider_payment_id, account_id, payment_id) VALUES ($1, $2, $3, $4)
     ON CONFLICT (provider, provider_payment_id) DO NOTHING RETURNING 1`,
    [provider, reference, accountId, paymentId],
    t,
  );
  return claimed.length === 1;
}

/** The credit lot a payment granted (the oldest, should there be several), or undefined. */
export async function lotOfPayment(db: Sequelize, t: Transaction, accountId: string, paymentId: string): Promise<string | undefined> {
  return (await row<{ id: string }>(db, `SELECT id FROM credit_lots WHERE account_id = $1 AND payment_id = $2 ORDER BY created_at LIMIT 1`, [accountId, paymentId], t))?.id;
}
