/**
 * Invoices (seed: Invoice) and credit package purchases.
 *
 * Rules (see state-machine.ts for the transitions):
 * - Totals are computed here with decimal.js: subtotal = sum of line
 *   amounts, total = subtotal + tax, scale 2; callers never send totals.
 * - Line items are added to DRAFT invoices only.
 * - The invoice number (INV-YYYYMM-NNNNNN) is assigned at finalization from
 *   a per-month counter row incremented in the finalizing transaction: a
 *   rolled-back finalization gives its number back, so numbers are gapless,
 *   and the counter's row lock makes them unique under concurrency.
 * - The billing snapshot is frozen when the invoice is finalized.
 * - A package purchase is a PENDING invoice with the package as its line
 *   (price after discount); its credits are granted when it is paid.
 */
import { randomUUID } from "node:crypto";
import { QueryTypes, type Sequelize, type Transaction } from "sequelize";
import { modelsOf, type Invoice } from "../../db/models/index.js";
import { inTransaction, type TransactionOptions } from "../../db/transaction.js";
import { ANY_AMOUNT, Dec, amountIn, fitsColumn, formatMoney, parseMoney, parseOptionalMoney, requireCurrency, type MoneyColumn } from "../../money.js";
import type { JsonObject } from "../audit.js";
import type { CreditPackages } from "../credits/packages.js";
import { isoDateOf, parseCalendarDate, todayUtc, type CalendarDate } from "../dates.js";
import { BillingError, Reason, Violations, failedPrecondition, invalidField, notFound } from "../errors.js";
import { runIdempotent } from "../idempotency.js";
import { decodePageToken, pageOf, pageSize } from "../pagination.js";
import { checkMetadata, checkText, requireId, requireIdempotencyKey, requireUuid, truncateText } from "../validation.js";
import { transition, type InvoiceAction, type InvoiceStatus } from "./state-machine.js";

export type PaymentMethodName = "stripe" | "paypal" | "bank_transfer" | "local_wallet" | "manual";

export interface LineItem {
  description: string;
  quantity: number;
  unitPrice: string;
  amount: string;
}

export interface BillingSnapshot {
  email: string;
  name: string;
  address: string;
}

export interface InvoiceView {
  id: string;
  accountId: string;
  invoiceNumber: string;
  subscriptionId: string;
  subtotal: string;
  tax: string;
  total: string;
  amountPaid: string;
  currency: string;
  status: InvoiceStatus;
  invoiceDate: string;
  dueDate: string;
  paidAt?: Date;
  lineItems: LineItem[];
  stripeInvoiceId: string;
  paymentMethod: PaymentMethodName | "";
  notes: string;
  metadata: JsonObject;
  billingSnapshot?: BillingSnapshot;
  creditPackageSlug: string;
  creditPackageCredits: bigint;
  createdAt: Date;
  updatedAt: Date;
}

export interface LineItemInput {
  description: string;
  quantity: bigint;
  unitPrice: string;
  amount: string;
}

export interface CreateInvoiceInput {
  accountId: string;
  currency: string;
  lineItems: LineItemInput[];
  tax: string;
  dueDate: CalendarDate | undefined;
  notes: string;
  subscriptionId: string;
  idempotencyKey: string;
  billingSnapshot: BillingSnapshot | undefined;
  metadata: JsonObject;
}

export interface ListInvoicesInput {
  accountId: string;
  statuses: InvoiceStatus[];
  startDate: CalendarDate | undefined;
  endDate: CalendarDate | undefined;
  pageSize: number;
  pageToken: string;
}

const MAX_NOTES = 4000;
const MAX_QUANTITY = 1_000_000n;

/** The invoice service. */
export class Invoices {
  constructor(
    private readonly sequelize: Sequelize,
    private readonly packages: CreditPackages,
  ) {}

  private get model() {
    return modelsOf(this.sequelize).Invoice;
  }

  /** Creates a DRAFT invoice; idempotent by key. */
  async create(input: CreateInvoiceInput, options: TransactionOptions = {}): Promise<InvoiceView> {
    const v = new Violations();
    v.collect(() => requireId(input.accountId, "account_id"));
    const currency = input.currency || "USD";
    v.collect(() => requireCurrency(currency, "currency"));
    const column = amountIn(currency);
    const items = input.lineItems.map((li, i) => v.collect(() => lineItem(li, `line_items[${i}]`, column)));
    const tax = v.collect(() => parseOptionalMoney(input.tax, "tax", column)) ?? new Dec(0);
    const dueDate = v.collect(() => parseCalendarDate(input.dueDate, "due_date"));
    if (dueDate && dueDate < todayUtc()) v.add("due_date", "must not be in the past");
    v.collect(() => checkText(input.notes, "notes", MAX_NOTES));
    v.collect(() => checkText(input.subscriptionId, "subscription_id"));
    v.collect(() => checkMetadata(input.metadata));
    if (input.billingSnapshot) checkSnapshot(v, input.billingSnapshot, "billing_snapshot");
    v.collect(() => requireIdempotencyKey(input.idempotencyKey));
    v.throwIfAny();
    const lines = items as LineItem[];
    const totals = computeTotals(lines, tax, column);
    return inTransaction(
      this.sequelize,
      async (t) => {
        const { result } = await runIdempotent(this.sequelize, t, { accountId: input.accountId, key: input.idempotencyKey, method: "CreateInvoice", request: input }, async () => {
          const row = await this.model.create(
            {
              account_id: input.accountId,
              currency,
              subscription_id: input.subscriptionId || null,
              line_items: lines.map(toJsonLine),
              subtotal: totals.subtotal,
              tax: totals.tax,
              total: totals.total,
              due_date: dueDate ?? null,
              notes: input.notes,
              metadata: input.metadata,
              billing_snapshot: input.billingSnapshot ? { ...input.billingSnapshot } : null,
              stripe_invoice_id: null,
              payment_method: null,
              paid_at: null,
              invoice_number: null,
              credit_package_id: null,
              credit_package_slug: null,
              credit_package_credits: null,
            },
            { transaction: t },
          );
          return view(row);
        });
        return result;
      },
      options,
    );
  }

  /** One invoice, or NOT_FOUND. `authorize` sees its account before anything is returned. */
  async get(invoiceId: string, authorize: (accountId: string) => void = () => undefined): Promise<InvoiceView> {
    const id = requireUuid(invoiceId, "invoice_id");
    const row = await this.model.findOne({ where: { id } });
    if (!row) throw notFound("invoice", invoiceId);
    authorize(row.account_id);
    return view(row);
  }

  /** Invoices newest first, filtered by account, statuses and invoice date. */
  async list(input: ListInvoicesInput): Promise<{ invoices: InvoiceView[]; nextPageToken: string }> {
    const v = new Violations();
    if (input.accountId) v.collect(() => requireId(input.accountId, "account_id"));
    const start = v.collect(() => parseCalendarDate(input.startDate, "start_date"));
    const end = v.collect(() => parseCalendarDate(input.endDate, "end_date"));
    if (start && end && end < start) v.add("end_date", "must not be before start_date");
    const size = v.collect(() => pageSize(input.pageSize));
    v.throwIfAny();
    const filters = { a: input.accountId, s: [...input.statuses].sort(), from: start ?? "", to: end ?? "" };
    const after = decodePageToken(input.pageToken, "invoices", filters);
    const where: string[] = [];
    const bind: unknown[] = [];
    if (input.accountId) where.push(`account_id = $${bind.push(input.accountId)}`);
    if (input.statuses.length) where.push(`status = ANY($${bind.push(input.statuses)}::text[])`);
    if (start) where.push(`invoice_date >= $${bind.push(start)}`);
    if (end) where.push(`invoice_date <= $${bind.push(end)}`);
    if (after) {
      const [created, id] = after;
      if (typeof created !== "string" || typeof id !== "string") throw invalidField("page_token", "is not a valid page token for this request");
      where.push(`(created_at, id) < ($${bind.push(created)}::timestamptz, $${bind.push(id)}::uuid)`);
    }
    const rows = await this.sequelize.query<Record<string, unknown>>(
      `SELECT *, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS created_key FROM invoices
       ${where.length ? "WHERE " + where.join(" AND ") : ""} ORDER BY created_at DESC, id DESC LIMIT $${bind.push(size! + 1)}`,
      { bind, type: QueryTypes.SELECT },
    );
    const page = pageOf(rows, size!, (r) => [r.created_key as string, r.id as string], "invoices", filters);
    return { invoices: page.items.map((r) => view(this.model.build(r as never, { raw: true, isNewRecord: false }))), nextPageToken: page.nextPageToken };
  }

  /** Appends a line to a DRAFT invoice and recomputes its totals. */
  async addLineItem(invoiceId: string, item: LineItemInput, options: TransactionOptions = {}): Promise<InvoiceView> {
    const v = new Violations();
    const id = v.collect(() => requireUuid(invoiceId, "invoice_id"));
    v.collect(() => lineItem(item, "", ANY_AMOUNT)); // the shape, at the widest scale; the invoice's currency decides below
    v.throwIfAny();
    return inTransaction(
      this.sequelize,
      async (t) => {
        const row = await this.lock(t, id!);
        const column = amountIn(row.currency);
        const line = lineItem(item, "", column);
        if (row.status !== "draft") {
          throw failedPrecondition(Reason.InvalidStateTransition, `line items can only be added to DRAFT invoices; this one is ${row.status.toUpperCase()}`, { status: row.status.toUpperCase() });
        }
        const lines = [...fromJsonLines(row.line_items), line!];
        const totals = computeTotals(lines, new Dec(row.tax), column);
        await row.update({ line_items: lines.map(toJsonLine), ...totals, updated_at: new Date() }, { transaction: t });
        return view(row);
      },
      options,
    );
  }

  /** DRAFT -> PENDING: assigns the next invoice number of the month and freezes the snapshot. */
  async finalize(invoiceId: string, snapshot: BillingSnapshot | undefined, options: TransactionOptions = {}): Promise<InvoiceView> {
    const v = new Violations();
    const id = v.collect(() => requireUuid(invoiceId, "invoice_id"));
    if (snapshot) checkSnapshot(v, snapshot, "billing_snapshot");
    v.throwIfAny();
    return inTransaction(
      this.sequelize,
      async (t) => {
        const row = await this.lock(t, id!);
        const status = transition(row.status as InvoiceStatus, "finalize");
        const number = await this.nextInvoiceNumber(t, row.account_id, row.id);
        await row.update(
          {
            status,
            invoice_number: number,
            billing_snapshot: snapshot ? { ...snapshot } : row.billing_snapshot,
            metadata: { ...row.metadata, finalized_at: new Date().toISOString() },
            updated_at: new Date(),
          },
          { transaction: t },
        );
        return view(row);
      },
      options,
    );
  }

  /** DRAFT/PENDING -> VOID, or PENDING -> UNCOLLECTIBLE, with the reason kept in metadata. */
  async close(invoiceId: string, action: Extract<InvoiceAction, "void" | "mark_uncollectible">, reason: string, options: TransactionOptions = {}): Promise<InvoiceView> {
    const v = new Violations();
    const id = v.collect(() => requireUuid(invoiceId, "invoice_id"));
    v.collect(() => checkText(reason, "reason"));
    v.throwIfAny();
    return inTransaction(
      this.sequelize,
      async (t) => {
        const row = await this.lock(t, id!);
        const status = transition(row.status as InvoiceStatus, action);
        await row.update({ status, metadata: { ...row.metadata, [`${status}_reason`]: reason, [`${status}_at`]: new Date().toISOString() }, updated_at: new Date() }, { transaction: t });
        return view(row);
      },
      options,
    );
  }

  /** Creates a PENDING invoice for an active credit package; idempotent by key. */
  async purchasePackage(
    input: { accountId: string; packageSlug: string; paymentMethod: PaymentMethodName | undefined; idempotencyKey: string },
    options: TransactionOptions = {},
  ): Promise<InvoiceView> {
    const v = new Violations();
    v.collect(() => requireId(input.accountId, "account_id"));
    if (input.packageSlug === "") v.add("package_slug", "is required");
    v.collect(() => requireIdempotencyKey(input.idempotencyKey));
    v.throwIfAny();
    const pkg = await this.packages.get(input.packageSlug).catch((e: unknown) => {
      throw e instanceof BillingError && e.kind === "not_found" ? invalidField("package_slug", `unknown credit package ${JSON.stringify(input.packageSlug)}`) : e;
    });
    if (!pkg.isActive) throw failedPrecondition(Reason.PackageInactive, `credit package ${JSON.stringify(pkg.slug)} is not for sale`, { slug: pkg.slug });
    const line: LineItem = { description: truncateText(`${pkg.name} (${pkg.credits} credits)`), quantity: 1, unitPrice: pkg.effectivePrice, amount: pkg.effectivePrice };
    const totals = computeTotals([line], new Dec(0), amountIn(pkg.currency));
    return inTransaction(
      this.sequelize,
      async (t) => {
        const { result } = await runIdempotent(this.sequelize, t, { accountId: input.accountId, key: input.idempotencyKey, method: "PurchaseCreditPackage", request: input }, async () => {
          const id = randomUUID();
          const number = await this.nextInvoiceNumber(t, input.accountId, id);
          const row = await this.model.create(
            {
              id,
              account_id: input.accountId,
              currency: pkg.currency,
              status: "pending",
              invoice_number: number,
              line_items: [toJsonLine(line)],
              ...totals,
              due_date: todayUtc(),
              notes: "",
              metadata: { purchase: "credit_package", finalized_at: new Date().toISOString() },
              billing_snapshot: null,
              subscription_id: null,
              stripe_invoice_id: null,
              payment_method: input.paymentMethod ?? null,
              paid_at: null,
              credit_package_id: pkg.id,
              credit_package_slug: pkg.slug,
              credit_package_credits: pkg.credits.toString(),
            },
            { transaction: t },
          );
          return view(row);
        });
        return result;
      },
      options,
    );
  }

  /** Locks an invoice row for a change. */
  async lock(t: Transaction, id: string): Promise<Invoice> {
    const row = await this.model.findOne({ where: { id }, transaction: t, lock: t.LOCK.UPDATE });
    if (!row) throw notFound("invoice", id);
    return row;
  }

  /**
   * The next gapless number of the current month (e.g. INV-202611-000042),
   * claimed for the invoice in invoice_numbers: the counter row's lock keeps
   * it gapless, the claim keeps it unique across every account.
   */
  private async nextInvoiceNumber(t: Transaction, accountId: string, invoiceId: string): Promise<string> {
    const period = todayUtc().slice(0, 7).replace("-", "");
    const [row] = await this.sequelize.query<{ last_value: number }>(
      `INSERT INTO invoice_number_sequences (period, last_value) VALUES ($1, 1)
       ON CONFLICT (period) DO UPDATE SET last_value = invoice_number_sequences.last_value + 1 RETURNING last_value`,
      { bind: [period], transaction: t, type: QueryTypes.SELECT },
    );
    const number = `INV-${period}-${String(row!.last_value).padStart(6, "0")}`;
    await this.sequelize.query(`INSERT INTO invoice_numbers (invoice_number, account_id, invoice_id) VALUES ($1, $2, $3)`, {
      bind: [number, accountId, invoiceId],
      transaction: t,
    });
    return number;
  }
}

function lineItem(li: LineItemInput, prefix: string, column: MoneyColumn): LineItem {
  const f = (name: string) => (prefix ? `${prefix}.${name}` : name);
  const v = new Violations();
  if (li.description === "") v.add(f("description"), "is required");
  else v.collect(() => checkText(li.description, f("description")));
  if (li.quantity < 1n || li.quantity > MAX_QUANTITY) v.add(f("quantity"), `must be between 1 and ${MAX_QUANTITY}`);
  const unit = v.collect(() => parseMoney(li.unitPrice, f("unit_price"), column));
  const given = v.collect(() => parseOptionalMoney(li.amount, f("amount"), column));
  v.throwIfAny();
  const amount = given ?? unit!.times(li.quantity.toString());
  if (!fitsColumn(amount, column)) throw invalidField(f("amount"), "quantity x unit_price is too large");
  return { description: li.description, quantity: Number(li.quantity), unitPrice: formatMoney(unit!, column), amount: formatMoney(amount, column) };
}

function computeTotals(lines: LineItem[], tax: Dec, column: MoneyColumn): { subtotal: string; tax: string; total: string } {
  const subtotal = lines.reduce((sum, l) => sum.plus(l.amount), new Dec(0));
  const total = subtotal.plus(tax);
  if (!fitsColumn(total, column)) throw invalidField("line_items", "the invoice total is too large");
  return { subtotal: formatMoney(subtotal, column), tax: formatMoney(tax, column), total: formatMoney(total, column) };
}

function checkSnapshot(v: Violations, s: BillingSnapshot, field: string): void {
  v.collect(() => checkText(s.email, `${field}.email`));
  if (s.email && !/^[^@\s]+@[^@\s]+$/.test(s.email)) v.add(`${field}.email`, "is not an e-mail address");
  v.collect(() => checkText(s.name, `${field}.name`));
  v.collect(() => checkText(s.address, `${field}.address`, 1000));
}

function toJsonLine(l: LineItem) {
  return { description: l.description, quantity: l.quantity, unit_price: l.unitPrice, amount: l.amount };
}

function fromJsonLines(lines: Invoice["line_items"]): LineItem[] {
  return (lines ?? []).map((l) => ({ description: l.description, quantity: l.quantity, unitPrice: l.unit_price, amount: l.amount }));
}

/** The caller-facing form of an invoice row. */
export function view(r: Invoice): InvoiceView {
  const out: InvoiceView = {
    id: r.id,
    accountId: r.account_id,
    invoiceNumber: r.invoice_number ?? "",
    subscriptionId: r.subscription_id ?? "",
    subtotal: formatMoney(r.subtotal, amountIn(r.currency)),
    tax: formatMoney(r.tax, amountIn(r.currency)),
    total: formatMoney(r.total, amountIn(r.currency)),
    amountPaid: formatMoney(r.amount_paid, amountIn(r.currency)),
    currency: r.currency,
    status: r.status as InvoiceStatus,
    invoiceDate: isoDateOf(r.invoice_date),
    dueDate: isoDateOf(r.due_date),
    lineItems: fromJsonLines(r.line_items),
    stripeInvoiceId: r.stripe_invoice_id ?? "",
    paymentMethod: (r.payment_method ?? "") as PaymentMethodName | "",
    notes: r.notes,
    metadata: r.metadata ?? {},
    creditPackageSlug: r.credit_package_slug ?? "",
    creditPackageCredits: BigInt(r.credit_package_credits ?? 0),
    createdAt: r.created_at,
    updatedAt: r.updated_at,
  };
  if (r.paid_at) out.paidAt = r.paid_at;
  if (r.billing_snapshot) out.billingSnapshot = r.billing_snapshot as unknown as BillingSnapshot;
  return out;
}
