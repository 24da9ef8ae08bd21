/**
 * The auto_top_ups table (one row per top-up attempt), and what the worker
 * reads of the invoice and payment it makes.
 */
import type { Sequelize, Transaction } from "sequelize";
import { row, rows, run } from "../sql.js";

export type AttemptState = "pending" | "processing" | "succeeded" | "failed" | "skipped";

/** An attempt row; `credits` (of its package) only where a read joins them. */
export interface AttemptRow {
  account_id: string;
  id: string;
  state: AttemptState;
  package_id: string;
  threshold: string;
  balance_at_trigger: string;
  invoice_id: string | null;
  payment_id: string | null;
  provider_reference: string | null;
  payment_method_id: string | null;
  provider_customer_id: string | null;
  provider_payment_method_id: string | null;
  failure_reason: string;
  attempts: number;
  created_at: Date;
  completed_at: Date | null;
  credits: string | null;
}

/** An attempt's key. */
export interface AttemptKey {
  account_id: string;
  id: string;
}

const WITH_CREDITS = `a.*, COALESCE(i.credit_package_credits, p.credits)::text AS credits`;
const CREDIT_JOINS = `LEFT JOIN invoices i ON i.account_id = a.account_id AND i.id = a.invoice_id LEFT JOIN credit_packages p ON p.id = a.package_id`;

/** One page of an account's attempts, newest first, after (created_key, id). */
export function attemptsOf(db: Sequelize, accountId: string, after: [string, string] | undefined, limit: number): Promise<(AttemptRow & { created_key: string })[]> {
  const bind: unknown[] = [accountId];
  const keyset = after ? `AND (a.created_at, a.id) < ($${bind.push(after[0])}::timestamptz, $${bind.push(after[1])}::uuid)` : "";
  return rows(
    db,
    `SELECT ${WITH_CREDITS}, to_char(a.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS created_key
     FROM auto_top_ups a ${CREDIT_JOINS}
     WHERE a.account_id = $1 ${keyset} ORDER BY a.created_at DESC, a.id DESC LIMIT $${bind.push(limit)}`,
    bind,
  );
}

/** One attempt with the credits of its package. */
export function attemptWithCredits(db: Sequelize, t: Transaction, a: AttemptKey): Promise<AttemptRow | undefined> {
  return row(db, `SELECT ${WITH_CREDITS} FROM auto_top_ups a ${CREDIT_JOINS} WHERE a.account_id = $1 AND a.id = $2`, [a.account_id, a.id], t);
}

/**
 * Leases up to `limit` due attempts (pending or processing, no live lease),
 * oldest first, counting one more try each; racing replicas skip each other's rows.
 */
export function claimDue(db: Sequelize, limit: number, leaseMs: number): Promise<AttemptRow[]> {
  return rows(
    db,
    `WITH due AS (
       SELECT account_id, id FROM auto_top_ups
       WHERE state IN ('pending', 'processing') AND (lease_until IS NULL OR lease_until < now())
       ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED)
     UPDATE auto_top_ups a SET lease_until = now() + $2 * interval '1 millisecond', attempts = a.attempts + 1, updated_at = now()
     FROM due WHERE a.account_id = due.account_id AND a.id = due.id
     RETURNING a.*, NULL::text AS credits`,
    [limit, leaseMs],
  );
}

/** The attempt locked, or undefined if it is gone. */
export function lockAttempt(db: Sequelize, t: Transaction, a: AttemptKey): Promise<AttemptRow | undefined> {
  return row(db, `SELECT *, NULL::text AS credits FROM auto_top_ups WHERE account_id = $1 AND id = $2 FOR UPDATE`, [a.account_id, a.id], t);
}

/** Top-ups of the account this calendar month (UTC) that succeeded or are being charged, other than `a`, and their total in `currency`. */
export async function monthToDate(db: Sequelize, t: Transaction, a: AttemptKey, currency: string): Promise<{ n: number; spent: string }> {
  const found = await row<{ n: number; spent: string }>(
    db,
    `SELECT count(*)::int AS n, COALESCE(sum(i.total) FILTER (WHERE i.currency = $3), 0)::text AS spent
     FROM auto_top_ups o LEFT JOIN invoices i ON i.account_id = o.account_id AND i.id = o.invoice_id
     WHERE o.account_id = $1 AND o.id <> $2 AND o.state IN ('succeeded', 'processing')
       AND o.created_at >= date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'`,
    [a.account_id, a.id, currency],
    t,
  );
  return found!;
}

/** Pending -> processing, with the invoice and the method (and its provider ids) it charges. */
export function markProcessing(
  db: Sequelize,
  t: Transaction,
  a: AttemptKey,
  charge: { invoiceId: string; methodId: string; customerId: string; paymentMethodId: string },
): Promise<AttemptRow | undefined> {
  return row(
    db,
    `UPDATE auto_top_ups SET state = 'processing', invoice_id = $3, payment_method_id = $4, provider_customer_id = $5, provider_payment_method_id = $6, updated_at = now()
     WHERE account_id = $1 AND id = $2 RETURNING *, NULL::text AS credits`,
    [a.account_id, a.id, charge.invoiceId, charge.methodId, charge.customerId, charge.paymentMethodId],
    t,
  );
}

/** What a processing attempt's charge was prepared with: its invoice and the saved method's provider. */
export interface ChargeDetailsRow {
  invoice_number: string;
  credit_package_slug: string;
  total: string;
  currency: string;
  type: string | null;
  country_code: string | null;
}

export function chargeDetailsOf(db: Sequelize, a: AttemptRow): Promise<ChargeDetailsRow | undefined> {
  return row(
    db,
    `SELECT i.invoice_number, i.credit_package_slug, i.total::text AS total, i.currency, m.type, m.country_code
     FROM invoices i LEFT JOIN account_payment_methods m ON m.account_id = i.account_id AND m.id = $3
     WHERE i.account_id = $1 AND i.id = $2`,
    [a.account_id, a.invoice_id, a.payment_method_id],
  );
}

/** A try interrupted by shutdown: not counted, and free for any replica at once. */
export async function releaseTry(db: Sequelize, t: Transaction, a: AttemptKey): Promise<void> {
  await run(db, `UPDATE auto_top_ups SET attempts = greatest(attempts - 1, 0), lease_until = NULL, updated_at = now() WHERE account_id = $1 AND id = $2`, [a.account_id, a.id], t);
}

/** A try with no known outcome: the reason, and the provider's payment reference once known. */
export async function noteUnknownOutcome(db: Sequelize, t: Transaction, a: AttemptKey, reason: string, reference: string | undefined): Promise<void> {
  await run(
    db,
    `UPDATE auto_top_ups SET failure_reason = $3, provider_reference = COALESCE($4, provider_reference), updated_at = now() WHERE account_id = $1 AND id = $2`,
    [a.account_id, a.id, reason, reference ?? null],
    t,
  );
}

/** Ends an attempt; whether it was there to end. */
export async function finishAttempt(
  db: Sequelize,
  t: Transaction,
  a: AttemptKey,
  state: AttemptState,
  reason: string,
  refs: { paymentId?: string; reference?: string },
): Promise<boolean> {
  const done = await rows(
    db,
    `UPDATE auto_top_ups a SET state = $3, failure_reason = $4, payment_id = COALESCE($5, a.payment_id), provider_reference = COALESCE($6, a.provider_reference),
       lease_until = NULL, completed_at = now(), updated_at = now()
     WHERE a.account_id = $1 AND a.id = $2 RETURNING a.id`,
    [a.account_id, a.id, state, reason, refs.paymentId ?? null, refs.reference ?? null],
    t,
  );
  return done.length > 0;
}

/** The payment a provider reference belongs to, if recorded. */
export async function paymentOfRef(db: Sequelize, t: Transaction, provider: string, reference: string): Promise<string | undefined> {
  return (await row<{ payment_id: string }>(db, `SELECT payment_id FROM provider_payment_refs WHERE provider = $1 AND provider_payment_id = $2`, [provider, reference], t))?.payment_id;
}

/** A failed attempt whose invoice was paid after all, with the payment that paid it. */
export interface PaidAfterFailureRow extends AttemptKey {
  payment_id: string | null;
  provider_reference: string | null;
}

/**
 * Failed attempts whose invoice is PAID (a provider webhook settled the
 * charge after the attempt gave up), locked; racing replicas skip each other's.
 */
export function paidAfterFailure(db: Sequelize, t: Transaction, limit: number): Promise<PaidAfterFailureRow[]> {
  return rows(
    db,
    `SELECT a.account_id, a.id, pay.id AS payment_id, pay.provider_payment_id AS provider_reference
     FROM auto_top_ups a
     JOIN invoices i ON i.account_id = a.account_id AND i.id = a.invoice_id
     LEFT JOIN LATERAL (SELECT p.id, p.provider_payment_id FROM payments p
                        WHERE p.account_id = a.account_id AND p.invoice_id = a.invoice_id AND p.status NOT IN ('pending_approval', 'failed')
                        ORDER BY p.created_at DESC LIMIT 1) pay ON true
     WHERE a.state = 'failed' AND i.status = 'paid'
     LIMIT $1 FOR UPDATE OF a SKIP LOCKED`,
    [limit],
    t,
  );
}
