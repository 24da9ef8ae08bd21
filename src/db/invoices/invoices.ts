/**
 * The invoices adapter: invoices, and the invoice numbers claimed for them
 * (invoice_number_sequences, invoice_numbers). SQL only; the rules live in
 * src/domain/invoices/invoices.ts.
 */
import type { Sequelize, Transaction } from "sequelize";
import { row, rows, run } from "../sql.js";

/** A line as stored in invoices.line_items. */
export interface StoredLine {
  description: string;
  quantity: number;
  unit_price: string;
  amount: string;
}

/** An invoice row: NUMERIC and BIGINT columns as strings, DATE columns as "YYYY-MM-DD". */
export interface InvoiceRow {
  account_id: string;
  id: string;
  invoice_number: string | null;
  subscription_id: string | null;
  subtotal: string;
  tax: string;
  total: string;
  amount_paid: string;
  currency: string;
  status: string;
  invoice_date: string;
  due_date: string | null;
  paid_at: Date | null;
  line_items: StoredLine[];
  stripe_invoice_id: string | null;
  payment_method: string | null;
  notes: string;
  metadata: Record<string, unknown>;
  billing_snapshot: Record<string, unknown> | null;
  credit_package_id: string | null;
  credit_package_slug: string | null;
  credit_package_credits: string | null;
  created_at: Date;
  updated_at: Date;
}

/** Which invoice: its account and id. */
type InvoiceKey = Pick<InvoiceRow, "account_id" | "id">;

const COLUMNS = `account_id, id, invoice_number, subscription_id, subtotal, tax, total, amount_paid, currency, status,
  invoice_date::text AS invoice_date, due_date::text AS due_date, paid_at, line_items, stripe_invoice_id, payment_method,
  notes, metadata, billing_snapshot, credit_package_id, credit_package_slug, credit_package_credits, created_at, updated_at`;

const json = (value: unknown) => (value === null || value === undefined ? null : JSON.stringify(value));

/** What a new invoice holds; the database fills in the id (unless given), dates and amount_paid. */
export interface NewInvoice {
  id?: string;
  account_id: string;
  currency: string;
  status: "draft" | "pending";
  invoice_number: string | null;
  subscription_id: string | null;
  line_items: StoredLine[];
  subtotal: string;
  tax: string;
  total: string;
  due_date: string | null;
  notes: string;
  metadata: Record<string, unknown>;
  billing_snapshot: Record<string, unknown> | null;
  payment_method: string | null;
  credit_package_id: string | null;
  credit_package_slug: string | null;
  credit_package_credits: string | null;
}

/** Inserts an invoice. */
export async function insertInvoice(db: Sequelize, t: Transaction, v: NewInvoice): Promise<InvoiceRow> {
  return (await row<InvoiceRow>(
    db,
    `INSERT INTO invoices (id, account_id, currency, status, invoice_number, subscription_id, line_items, subtotal, tax, total,
       due_date, notes, metadata, billing_snapshot, payment_method, credit_package_id, credit_package_slug, credit_package_credits)
     VALUES (COALESCE($1::uuid, gen_random_uuid()), $2, $3, $4, $5, $6, $7::jsonb, $8, $9, $10, $11::date, $12, $13::jsonb, $14::jsonb, $15, $16, $17, $18)
     RETURNING ${COLUMNS}`,
    [
      v.id ?? null, v.account_id, v.currency, v.status, v.invoice_number, v.subscription_id, json(v.line_items), v.subtotal, v.tax, v.total,
      v.due_date, v.notes, json(v.metadata), json(v.billing_snapshot), v.payment_method, v.credit_package_id, v.credit_package_slug, v.credit_package_credits,
    ],
    t,
  ))!;
}

/** An invoice by id, or undefined. */
export function findInvoice(db: Sequelize, id: string): Promise<InvoiceRow | undefined> {
  return row<InvoiceRow>(db, `SELECT ${COLUMNS} FROM invoices WHERE id = $1`, [id]);
}

/** An invoice by id, locked FOR UPDATE in `t`, or undefined. */
export function lockInvoice(db: Sequelize, t: Transaction, id: string): Promise<InvoiceRow | undefined> {
  return row<InvoiceRow>(db, `SELECT ${COLUMNS} FROM invoices WHERE id = $1 FOR UPDATE`, [id], t);
}

export interface InvoiceFilters {
  accountId: string;
  statuses: string[];
  startDate: string | undefined;
  endDate: string | undefined;
}

/** Invoices newest first (created_at, id), after a keyset position, `limit` at most; each with its position's timestamp as text. */
export function listInvoices(db: Sequelize, f: InvoiceFilters, after: { createdAt: string; id: string } | undefined, limit: number): Promise<(InvoiceRow & { created_key: string })[]> {
  const where: string[] = [];
  const bind: unknown[] = [];
  if (f.accountId) where.push(`account_id = $${bind.push(f.accountId)}`);
  if (f.statuses.length) where.push(`status = ANY($${bind.push(f.statuses)}::text[])`);
  if (f.startDate) where.push(`invoice_date >= $${bind.push(f.startDate)}`);
  if (f.endDate) where.push(`invoice_date <= $${bind.push(f.endDate)}`);
  if (after) where.push(`(created_at, id) < ($${bind.push(after.createdAt)}::timestamptz, $${bind.push(after.id)}::uuid)`);
  return rows(
    db,
    `SELECT ${COLUMNS}, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS created_key FROM invoices
     ${where.length ? "WHERE " + where.join(" AND ") : ""} ORDER BY created_at DESC, id DESC LIMIT $${bind.push(limit)}`,
    bind,
  );
}

/** Sets columns of one invoice (`sets` binds from $3 on), with updated_at; the row as it is after. */
async function updateInvoice(db: Sequelize, t: Transaction, inv: InvoiceKey, sets: string, values: unknown[]): Promise<InvoiceRow> {
  return (await row<InvoiceRow>(db, `UPDATE invoices SET ${sets}, updated_at = now() WHERE account_id = $1 AND id = $2 RETURNING ${COLUMNS}`, [inv.account_id, inv.id, ...values], t))!;
}

/** Replaces an invoice's lines and totals. */
export function setInvoiceLines(db: Sequelize, t: Transaction, inv: InvoiceKey, lines: StoredLine[], totals: { subtotal: string; tax: string; total: string }): Promise<InvoiceRow> {
  return updateInvoice(db, t, inv, `line_items = $3::jsonb, subtotal = $4, tax = $5, total = $6`, [json(lines), totals.subtotal, totals.tax, totals.total]);
}

/** Sets an invoice's status and metadata, and its number and snapshot when given (absent or null keeps them). */
export function setInvoiceStatus(
  db: Sequelize,
  t: Transaction,
  inv: InvoiceKey,
  v: { status: string; metadata: Record<string, unknown>; invoiceNumber?: string; billingSnapshot?: Record<string, unknown> | null },
): Promise<InvoiceRow> {
  return updateInvoice(
    db,
    t,
    inv,
    `status = $3, metadata = $4::jsonb, invoice_number = COALESCE($5, invoice_number), billing_snapshot = COALESCE($6::jsonb, billing_snapshot)`,
    [v.status, json(v.metadata), v.invoiceNumber ?? null, json(v.billingSnapshot)],
  );
}

/** Records what has been paid of an invoice; with `paid`, it becomes PAID at that time by that method. */
export function setInvoicePaid(db: Sequelize, t: Transaction, inv: InvoiceKey, amountPaid: string, paid?: { status: string; paidAt: Date; paymentMethod: string }): Promise<InvoiceRow> {
  return paid
    ? updateInvoice(db, t, inv, `amount_paid = $3, status = $4, paid_at = $5, payment_method = $6`, [amountPaid, paid.status, paid.paidAt, paid.paymentMethod])
    : updateInvoice(db, t, inv, `amount_paid = $3`, [amountPaid]);
}

/** Records a refund against an invoice: its amount_paid lowered, its metadata replaced. */
export function setInvoiceRefunded(db: Sequelize, t: Transaction, inv: InvoiceKey, amountPaid: string, metadata: Record<string, unknown>): Promise<InvoiceRow> {
  return updateInvoice(db, t, inv, `amount_paid = $3, metadata = $4::jsonb`, [amountPaid, json(metadata)]);
}

/**
 * Takes the next value of a month's invoice counter (YYYYMM), under the
 * counter row's lock until `t` ends: a rollback gives the value back.
 */
export async function nextInvoiceSequence(db: Sequelize, t: Transaction, period: string): Promise<number> {
  const r = await row<{ last_value: number }>(
    db,
    `INSERT INTO invoice_number_sequences (period, last_value) VALUES ($1, 1)
     ON CONFLICT (period) DO UPDATE SET last_value = invoice_number_sequences.last_value + 1 RETURNING last_value`,
    [period],
    t,
  );
  return r!.last_value;
}

/** Claims an invoice number for an invoice (unique across every account). */
export async function claimInvoiceNumber(db: Sequelize, t: Transaction, invoiceNumber: string, accountId: string, invoiceId: string): Promise<void> {
  await run(db, `INSERT INTO invoice_numbers (invoice_number, account_id, invoice_id) VALUES ($1, $2, $3)`, [invoiceNumber, accountId, invoiceId], t);
}
