/**
 * Invoices and credit package purchases (SQL in src/db/invoices/invoices.ts).
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
import type { Sequelize, Transaction } from "sequelize";
import * as db from "../../db/invoices/invoices.js";
import type { InvoiceRow, StoredLine } from "../../db/invoices/invoices.js";
import { inTransaction, type TransactionOptions } from "../../db/transaction.js";
import { ANY_AMOUNT, Dec, amountIn, fitsColumn, formatMoney, parseMoney, parseOptionalMoney, requireCurrency, type MoneyColumn } from "../money.js";
import { anyone, type Authorize } from "../access.js";
import type { CreditPackages } from "../credits/packages.js";
import { isoDateOf, parseCalendarDate, todayUtc, type CalendarDate } from "../dates.js";
import { BillingError, Reason, Violations, failedPrecondition, invalidField, notFound } from "../errors.js";
import { runIdempotent } from "../idempotency.js";
import type { JsonObject } from "../json.js";
import { pageOf, pageRequest } from "../pagination.js";
import { checkMetadata, checkText, requireId, requireIdempotencyKey, requireUuid, truncateText } from "../validation.js";
import { invoiceAllows, transition, type InvoiceAction, type InvoiceStatus } from "./state-machine.js";

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

/** The actions that close an invoice. */
export type CloseAction = Extract<InvoiceAction, "void" | "mark_uncollectible">;

const MAX_NOTES = 4000;
const MAX_QUANTITY = 1_000_000n;

/** The invoice service. */
export class Invoices {
  constructor(
    private readonly sequelize: Sequelize,
    private readonly packages: CreditPackages,
  ) {}

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
          const row = await db.insertInvoice(this.sequelize, t, {
            account_id: input.accountId,
            currency,
            status: "draft",
            invoice_number: null,
            subscription_id: input.subscriptionId || null,
            line_items: lines.map(toStoredLine),
            ...totals,
            due_date: dueDate ?? null,
            notes: input.notes,
            metadata: input.metadata,
            billing_snapshot: input.billingSnapshot ? { ...input.billingSnapshot } : null,
            payment_method: null,
            credit_package_id: null,
            credit_package_slug: null,
            credit_package_credits: null,
          });
          return view(row);
        });
        return result;
      },
      options,
    );
  }

  /** One invoice, or NOT_FOUND. `authorize` sees its account before anything is returned. */
  async get(invoiceId: string, authorize: Authorize = anyone): Promise<InvoiceView> {
    const id = requireUuid(invoiceId, "invoice_id");
    const row = await db.findInvoice(this.sequelize, id);
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
    const filters = { a: input.accountId, s: [...input.statuses].sort(), from: start ?? "", to: end ?? "" };
    const page = v.collect(() => pageRequest(input, "invoices", filters, ["timestamp", "uuid"]));
    v.throwIfAny();
    const { size, after } = page!;
    const found = await db.listInvoices(
      this.sequelize,
      { accountId: input.accountId, statuses: input.statuses, startDate: start, endDate: end },
      after && { createdAt: after[0] as string, id: after[1] as string },
      size + 1,
    );
    const { items, nextPageToken } = pageOf(found, size, (r) => [r.created_key, r.id], "invoices", filters);
    return { invoices: items.map(view), nextPageToken };
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
        if (!invoiceAllows(row.status, "add_line_item")) {
          throw failedPrecondition(Reason.InvalidStateTransition, `line items can only be added to DRAFT invoices; this one is ${row.status.toUpperCase()}`, { status: row.status.toUpperCase() });
        }
        const lines = [...fromStoredLines(row.line_items), line];
        const totals = computeTotals(lines, new Dec(row.tax), column);
        return view(await db.setInvoiceLines(this.sequelize, t, row, lines.map(toStoredLine), totals));
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
        const updated = await db.setInvoiceStatus(this.sequelize, t, row, {
          status,
          invoiceNumber: number,
          billingSnapshot: snapshot ? { ...snapshot } : null,
          metadata: { ...row.metadata, finalized_at: new Date().toISOString() },
        });
        return view(updated);
      },
      options,
    );
  }

  /** DRAFT/PENDING -> VOID, or PENDING -> UNCOLLECTIBLE, with the reason kept in metadata. */
  async close(invoiceId: string, action: CloseAction, reason: string, options: TransactionOptions = {}): Promise<InvoiceView> {
    const v = new Violations();
    const id = v.collect(() => requireUuid(invoiceId, "invoice_id"));
    v.collect(() => checkText(reason, "reason"));
    v.throwIfAny();
    return inTransaction(this.sequelize, async (t) => (await this.closeIn(t, id!, action, reason))!, options);
  }

  /**
   * `close` inside the caller's transaction, for internal callers (e.g. the
   * auto top-up worker voiding a declined top-up's invoice): locks the
   * invoice, then VOID or UNCOLLECTIBLE with `reason` and the time in its
   * metadata (`<status>_reason`, `<status>_at`). FAILED_PRECONDITION /
   * INVALID_STATE_TRANSITION when the state machine forbids it, unless
   * `ifAllowed`, which answers undefined and changes nothing instead.
   */
  async closeIn(t: Transaction, invoiceId: string, action: CloseAction, reason: string, options: { ifAllowed?: boolean } = {}): Promise<InvoiceView | undefined> {
    const row = await this.lock(t, invoiceId);
    if (options.ifAllowed && !invoiceAllows(row.status, action)) return undefined;
    const status = transition(row.status as InvoiceStatus, action);
    const updated = await db.setInvoiceStatus(this.sequelize, t, row, { status, metadata: { ...row.metadata, [`${status}_reason`]: reason, [`${status}_at`]: new Date().toISOString() } });
    return view(updated);
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
          const row = await db.insertInvoice(this.sequelize, t, {
            id,
            account_id: input.accountId,
            currency: pkg.currency,
            status: "pending",
            invoice_number: number,
            subscription_id: null,
            line_items: [toStoredLine(line)],
            ...totals,
            due_date: todayUtc(),
            notes: "",
            metadata: { purchase: "credit_package", finalized_at: new Date().toISOString() },
            billing_snapshot: null,
            payment_method: input.paymentMethod ?? null,
            credit_package_id: pkg.id,
            credit_package_slug: pkg.slug,
            credit_package_credits: pkg.credits.toString(),
          });
          return view(row);
        });
        return result;
      },
      options,
    );
  }

  /**
   * Records a payment against an invoice locked in `t`: `amountPaid` is the
   * new total paid; with `paid` (the payment covers the total) the invoice
   * becomes PAID at that time by that method.
   */
  async recordPaymentIn(t: Transaction, invoice: InvoiceRow, amountPaid: string, paid?: { paidAt: Date; paymentMethod: string }): Promise<InvoiceRow> {
    return db.setInvoicePaid(this.sequelize, t, invoice, amountPaid, paid && { status: transition(invoice.status as InvoiceStatus, "pay"), ...paid });
  }

  /** Records a refund against an invoice locked in `t`: `amountPaid` is what remains paid; it stays PAID. */
  async recordRefundIn(t: Transaction, invoice: InvoiceRow, amountPaid: string, at: Date): Promise<InvoiceRow> {
    return db.setInvoiceRefunded(this.sequelize, t, invoice, amountPaid, { ...invoice.metadata, refunded_at: at.toISOString() });
  }

  /** Locks an invoice row for a change in `t`; NOT_FOUND when there is none. */
  async lock(t: Transaction, id: string): Promise<InvoiceRow> {
    const row = await db.lockInvoice(this.sequelize, t, id);
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
    const value = await db.nextInvoiceSequence(this.sequelize, t, period);
    const number = `INV-${period}-${String(value).padStart(6, "0")}`;
    await db.claimInvoiceNumber(this.sequelize, t, number, accountId, invoiceId);
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

function toStoredLine(l: LineItem): StoredLine {
  return { description: l.description, quantity: l.quantity, unit_price: l.unitPrice, amount: l.amount };
}

function fromStoredLines(lines: StoredLine[] | null): LineItem[] {
  return (lines ?? []).map((l) => ({ description: l.description, quantity: l.quantity, unitPrice: l.unit_price, amount: l.amount }));
}

/** The caller-facing form of an invoice row. */
function view(r: InvoiceRow): InvoiceView {
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
    lineItems: fromStoredLines(r.line_items),
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
