/**
 * Payments of invoices, with a history row for every state change (SQL in
 * src/db/payments/payments.ts; transitions in state-machine.ts).
 *
 * Rules:
 * - Manual payments (bank transfer, local wallet, manual) are submitted for
 *   a PENDING invoice, for exactly its outstanding amount (no partial
 *   payments), one awaiting approval at a time: PENDING_APPROVAL.
 * - Settling a payment (admin approval, or a provider's success callback)
 *   happens in one database transaction: the payment SUCCEEDED, the invoice
 *   PAID once covered, and a package's credits granted (a PURCHASE linked to
 *   the payment). Locks are taken invoice first, then payment, so approval
 *   and a webhook racing for one invoice serialise and the credits are
 *   granted exactly once.
 * - A refund (SUCCEEDED -> REFUNDED) takes back the credits the payment
 *   granted through the ledger (a negative REFUND linked to the payment).
 *   Balances never go below zero: if some were spent the refund fails with
 *   CREDITS_ALREADY_SPENT unless revoke_available_only, which takes back what
 *   is available and records the shortfall. The invoice stays PAID with its
 *   amount_paid reduced.
 */
import { randomUUID } from "node:crypto";
import type { Decimal } from "decimal.js";
import type { Sequelize, Transaction } from "sequelize";
import type { InvoiceRow } from "../../db/invoices/invoices.js";
import * as db from "../../db/payments/payments.js";
import type { PaymentRow } from "../../db/payments/payments.js";
import { inTransaction, type TransactionOptions } from "../../db/transaction.js";
import { ANY_AMOUNT, Dec, amountIn, fitsColumn, formatMoney, parseMoney, parseOptionalMoney, roundToInteger } from "../money.js";
import { anyone, type Authorize } from "../access.js";
import type { CreditLedger } from "../credits/ledger.js";
import { BillingError, Reason, Violations, failedPrecondition, invalidField, notFound } from "../errors.js";
import { runIdempotent } from "../idempotency.js";
import type { Invoices, PaymentMethodName } from "../invoices/invoices.js";
import { invoiceAllows } from "../invoices/state-machine.js";
import type { JsonObject } from "../json.js";
import { pageOf, pageRequest } from "../pagination.js";
import { checkText, requireId, requireIdempotencyKey, requireUuid, truncateText } from "../validation.js";
import type { PaymentRef } from "./providers/index.js";
import { PAYMENTS, type PaymentStatus } from "./state-machine.js";

const MANUAL_METHODS: readonly PaymentMethodName[] = ["bank_transfer", "local_wallet", "manual"];

export interface PaymentView {
  id: string;
  accountId: string;
  invoiceId: string;
  amount: string;
  currency: string;
  status: PaymentStatus;
  paymentMethod: PaymentMethodName;
  /** The provider that took the payment ("" for manual payments) and its references. */
  provider: string;
  providerPaymentId: string;
  providerSecondaryId: string;
  /** The same references under their provider-specific names (for older callers). */
  stripePaymentIntentId: string;
  stripeChargeId: string;
  paypalOrderId: string;
  paypalCaptureId: string;
  manualReference: string;
  manualNotes: string;
  adminNotes: string;
  approvedBy: string;
  approvedAt?: Date;
  processedAt?: Date;
  failedAt?: Date;
  refundedAt?: Date;
  failureReason: string;
  metadata: JsonObject;
  creditsGranted: bigint;
  creditsRevoked: bigint;
  creditsShortfall: bigint;
  /** Scale-2 amount refunded so far. */
  amountRefunded: string;
  createdAt: Date;
  updatedAt: Date;
}

export interface PaymentHistoryView {
  id: string;
  paymentId: string;
  fromStatus: PaymentStatus | "";
  toStatus: PaymentStatus;
  actor: string;
  note: string;
  createdAt: Date;
}

/** What a provider event did, for the webhook log. */
export interface ProviderOutcome {
  outcome: string;
  paymentId?: string;
  detail?: string;
}

/** Who applies a provider event: actor "webhook:<provider>", note the event id. */
export interface ProviderActor {
  actor: string;
  note: string;
}

/** The payment service. */
export class Payments {
  constructor(
    private readonly sequelize: Sequelize,
    private readonly invoices: Invoices,
    private readonly ledger: CreditLedger,
  ) {}

  /** Records a manual payment awaiting approval; idempotent by key. */
  async submitManual(
    input: { invoiceId: string; paymentMethod: PaymentMethodName | undefined; amount: string; manualReference: string; manualNotes: string; idempotencyKey: string },
    actor: string,
    authorize: Authorize,
    options: TransactionOptions = {},
  ): Promise<PaymentView> {
    const v = new Violations();
    const invoiceId = v.collect(() => requireUuid(input.invoiceId, "invoice_id"));
    if (!input.paymentMethod || !MANUAL_METHODS.includes(input.paymentMethod)) v.add("payment_method", "must be BANK_TRANSFER, LOCAL_WALLET or MANUAL");
    const amount = v.collect(() => parseMoney(input.amount, "amount", ANY_AMOUNT, { positive: true }));
    v.collect(() => checkText(input.manualReference, "manual_reference"));
    v.collect(() => checkText(input.manualNotes, "manual_notes", 4000));
    v.collect(() => requireIdempotencyKey(input.idempotencyKey));
    let invoice: Awaited<ReturnType<Invoices["get"]>> | undefined;
    if (invoiceId) {
      try {
        invoice = await this.invoices.get(invoiceId, authorize);
      } catch (err) {
        v.throwIfAny(); // bad fields first, all of them
        throw err;
      }
      const digits = amountIn(invoice.currency).scale;
      if (amount && amount.decimalPlaces() > digits) v.add("amount", `has more decimal places than ${invoice.currency} has (${digits})`);
    }
    v.throwIfAny();
    return inTransaction(
      this.sequelize,
      async (t) => {
        const { result } = await runIdempotent(this.sequelize, t, { accountId: invoice!.accountId, key: input.idempotencyKey, method: "SubmitManualPayment", request: input }, async () => {
          const inv = await this.invoices.lock(t, invoice!.id);
          if (!invoiceAllows(inv.status, "pay")) {
            throw failedPrecondition(Reason.InvalidStateTransition, `only PENDING invoices can be paid; this one is ${inv.status.toUpperCase()}`, { status: inv.status.toUpperCase() });
          }
          const column = amountIn(inv.currency);
          const outstanding = new Dec(inv.total).minus(inv.amount_paid);
          if (!amount!.eq(outstanding)) {
            throw failedPrecondition(Reason.AmountMismatch, `amount must equal the outstanding total ${formatMoney(outstanding, column)} ${inv.currency} (partial payments are not supported)`, {
              outstanding: formatMoney(outstanding, column),
            });
          }
          if ((await db.countAwaitingApproval(this.sequelize, t, inv.account_id, inv.id)) > 0) throw failedPrecondition(Reason.PaymentPending, "a payment for this invoice is already awaiting approval");
          const payment = await db.insertPayment(this.sequelize, t, {
            account_id: inv.account_id,
            invoice_id: inv.id,
            amount: formatMoney(amount!, column),
            currency: inv.currency,
            payment_method: input.paymentMethod!,
            manual_reference: input.manualReference,
            manual_notes: input.manualNotes,
          });
          await this.recordHistory(t, payment, null, actor, "submitted");
          return view(payment);
        });
        return result;
      },
      options,
    );
  }

  /** Admin: PENDING_APPROVAL -> SUCCEEDED, invoice paid and credits granted, together. */
  async approve(paymentId: string, adminNotes: string, actor: string, options: TransactionOptions = {}): Promise<PaymentView> {
    const id = requireUuid(paymentId, "payment_id");
    checkText(adminNotes, "admin_notes", 4000);
    const found = await this.find(id);
    return inTransaction(
      this.sequelize,
      async (t) => {
        const invoice = await this.invoices.lock(t, found.invoice_id);
        const payment = await this.lock(t, found.account_id, id);
        PAYMENTS.check(payment.status as PaymentStatus, "approve");
        if (!invoiceAllows(invoice.status, "pay")) {
          throw failedPrecondition(Reason.InvalidStateTransition, `the invoice is ${invoice.status.toUpperCase()}, not PENDING: reject this payment instead`, { invoice_status: invoice.status.toUpperCase() });
        }
        const approved = await db.setApproval(this.sequelize, t, payment, { adminNotes, approvedBy: actor, approvedAt: new Date() });
        return view(await this.settle(t, invoice, approved, actor, "approved"));
      },
      options,
    );
  }

  /** Admin: PENDING_APPROVAL -> FAILED with a reason. */
  async reject(paymentId: string, reason: string, actor: string, options: TransactionOptions = {}): Promise<PaymentView> {
    const v = new Violations();
    const id = v.collect(() => requireUuid(paymentId, "payment_id"));
    if (reason === "") v.add("reason", "is required");
    else v.collect(() => checkText(reason, "reason", 4000));
    v.throwIfAny();
    const found = await this.find(id!);
    return inTransaction(
      this.sequelize,
      async (t) => {
        const payment = await this.lock(t, found.account_id, id!);
        const from = payment.status as PaymentStatus;
        PAYMENTS.check(from, "reject");
        const failed = await db.setFailed(this.sequelize, t, payment, reason, new Date());
        await this.recordHistory(t, failed, from, actor, reason);
        return view(failed);
      },
      options,
    );
  }

  /** Admin: SUCCEEDED -> REFUNDED, taking back the credits it granted; idempotent by key. */
  async refund(
    input: { paymentId: string; reason: string; revokeAvailableOnly: boolean; idempotencyKey: string; amount: string },
    actor: string,
    options: TransactionOptions = {},
  ): Promise<PaymentView> {
    const v = new Violations();
    const id = v.collect(() => requireUuid(input.paymentId, "payment_id"));
    v.collect(() => checkText(input.reason, "reason", 4000));
    const amount = v.collect(() => parseOptionalMoney(input.amount, "amount", ANY_AMOUNT, { positive: true }));
    v.collect(() => requireIdempotencyKey(input.idempotencyKey));
    v.throwIfAny();
    const found = await this.find(id!);
    return inTransaction(
      this.sequelize,
      async (t) => {
        const { result } = await runIdempotent(this.sequelize, t, { accountId: found.account_id, key: input.idempotencyKey, method: "RefundPayment", request: input.amount === "" ? { ...input, amount: undefined } : input }, async () => {
          const invoice = await this.invoices.lock(t, found.invoice_id);
          const payment = await this.lock(t, found.account_id, id!);
          return view(await this.refundIn(t, invoice, payment, "refund", { reason: input.reason, revokeAvailableOnly: input.revokeAvailableOnly, actor, amount }));
        });
        return result;
      },
      options,
    );
  }

  /** One payment; `authorize` sees its account first. */
  async get(paymentId: string, authorize: Authorize = anyone): Promise<PaymentView> {
    const found = await this.find(requireUuid(paymentId, "payment_id"));
    authorize(found.account_id);
    return view(found);
  }

  /** Payments newest first, filtered by account, statuses and methods. */
  async list(input: { accountId: string; statuses: PaymentStatus[]; methods: PaymentMethodName[]; pageSize: number; pageToken: string }): Promise<{ payments: PaymentView[]; nextPageToken: string }> {
    if (input.accountId) requireId(input.accountId, "account_id");
    const filters = { a: input.accountId, s: [...input.statuses].sort(), m: [...input.methods].sort() };
    const { size, after } = pageRequest(input, "payments", filters, ["timestamp", "uuid"]);
    const found = await db.listPayments(this.sequelize, input, after && { createdAt: after[0] as string, id: after[1] as string }, size + 1);
    const { items, nextPageToken } = pageOf(found, size, (r) => [r.created_key, r.id], "payments", filters);
    return { payments: items.map(view), nextPageToken };
  }

  /** A payment's state changes, newest first. */
  async history(paymentId: string, requestedPageSize: number, pageToken: string, authorize: Authorize = anyone): Promise<{ entries: PaymentHistoryView[]; nextPageToken: string }> {
    const found = await this.find(requireUuid(paymentId, "payment_id"));
    authorize(found.account_id);
    const { size, after } = pageRequest({ pageSize: requestedPageSize, pageToken }, "payment_history", found.id, ["digits"]);
    const entries = await db.listHistory(this.sequelize, found, after?.[0] as string | undefined, size + 1);
    const { items, nextPageToken } = pageOf(entries, size, (r) => [r.id], "payment_history", found.id);
    return {
      entries: items.map((r) => ({ id: r.id, paymentId: r.payment_id, fromStatus: (r.from_status ?? "") as PaymentStatus | "", toStatus: r.to_status as PaymentStatus, actor: r.actor, note: r.note, createdAt: r.created_at })),
      nextPageToken,
    };
  }

  /**
   * A provider reports a payment of an invoice succeeded. Creates or updates
   * the payment and settles it, inside the caller's transaction. Returns what
   * happened, for the webhook log.
   */
  async providerSucceeded(
    t: Transaction,
    e: { invoiceId: string; provider: string; amount: string; currency: string; ref: PaymentRef },
    by: ProviderActor,
  ): Promise<ProviderOutcome> {
    const invoice = await this.lockNamedInvoice(t, e.invoiceId);
    if (!invoice) return { outcome: "ignored_unknown_invoice" };
    let payment = await db.paymentByProviderRef(this.sequelize, t, e.provider, e.ref.id);
    if (payment && !PAYMENTS.can(payment.status as PaymentStatus, "settle")) return { outcome: "already_settled", paymentId: payment.id };
    if (!invoiceAllows(invoice.status, "pay")) return { outcome: `ignored_invoice_${invoice.status}`, paymentId: payment?.id };
    const amount = new Dec(e.amount);
    const outstanding = new Dec(invoice.total).minus(invoice.amount_paid);
    if (!amount.eq(outstanding) || e.currency !== invoice.currency) {
      return {
        outcome: "ignored_amount_mismatch",
        paymentId: payment?.id,
        detail: `paid ${e.amount} ${e.currency}, outstanding ${formatMoney(outstanding, amountIn(invoice.currency))} ${invoice.currency}`,
      };
    }
    if (!payment) {
      const id = randomUUID();
      // A delivery racing this one for the same reference waits here, then finds it taken.
      if (!(await db.claimProviderRef(this.sequelize, t, e.provider, e.ref.id, invoice.account_id, id))) return { outcome: "already_settled" };
      payment = await db.insertPayment(this.sequelize, t, {
        id,
        account_id: invoice.account_id,
        invoice_id: invoice.id,
        amount: formatMoney(amount, amountIn(invoice.currency)),
        currency: invoice.currency,
        payment_method: e.provider,
        ...refColumns(e.provider, e.ref),
      });
      await this.recordHistory(t, payment, null, by.actor, by.note);
    } else {
      // A payment that failed before and now succeeds: what the provider charged this time counts.
      payment = await this.lock(t, payment.account_id, payment.id);
      payment = await db.setCharge(this.sequelize, t, payment, {
        amount: formatMoney(amount, amountIn(invoice.currency)),
        currency: invoice.currency,
        providerSecondaryId: e.ref.secondaryId ?? payment.provider_secondary_id,
      });
    }
    await this.settle(t, invoice, payment, by.actor, by.note);
    return { outcome: "settled", paymentId: payment.id };
  }

  /** A provider reports a payment failed. */
  async providerFailed(
    t: Transaction,
    e: { invoiceId: string; provider: string; amount: string; currency: string; ref: PaymentRef; reason: string },
    by: ProviderActor,
  ): Promise<ProviderOutcome> {
    const existing = await db.paymentByProviderRef(this.sequelize, t, e.provider, e.ref.id);
    if (existing) {
      const payment = await this.lock(t, existing.account_id, existing.id);
      const from = payment.status as PaymentStatus;
      if (!PAYMENTS.can(from, "fail")) return { outcome: `ignored_payment_${payment.status}`, paymentId: payment.id };
      await this.recordHistory(t, await db.setFailed(this.sequelize, t, payment, e.reason, new Date()), from, by.actor, by.note);
      return { outcome: "failed", paymentId: payment.id };
    }
    const invoice = await this.lockNamedInvoice(t, e.invoiceId);
    if (!invoice) return { outcome: "ignored_unknown_invoice" };
    const column = amountIn(invoice.currency);
    const amount = new Dec(e.amount);
    const id = randomUUID();
    if (!(await db.claimProviderRef(this.sequelize, t, e.provider, e.ref.id, invoice.account_id, id))) return { outcome: "ignored_known_reference" };
    const payment = await db.insertPayment(this.sequelize, t, {
      id,
      account_id: invoice.account_id,
      invoice_id: invoice.id,
      amount: formatMoney(amount.gt(0) && amount.decimalPlaces() <= column.scale && fitsColumn(amount, column) ? amount : invoice.total, column),
      currency: invoice.currency,
      payment_method: e.provider,
      status: "failed",
      failure_reason: e.reason,
      failed_at: new Date(),
      ...refColumns(e.provider, e.ref),
    });
    await this.recordHistory(t, payment, null, by.actor, by.note);
    return { outcome: "failed", paymentId: payment.id };
  }

  /**
   * A provider reports a refund: never refused, so credits are revoked as
   * far as the payment's lot holds them. Only what is new is applied: with
   * a running total (Stripe) the part beyond what was already refunded, so
   * a replayed or older delivery applies nothing; with one refund's own
   * amount (PayPal), that amount, at most what is left.
   */
  async providerRefunded(
    t: Transaction,
    e: { provider: string; ref: PaymentRef; currency: string; refundedTotal?: string; refund?: string },
    by: ProviderActor,
  ): Promise<ProviderOutcome> {
    const existing = await db.paymentByProviderRef(this.sequelize, t, e.provider, e.ref.id);
    if (!existing) return { outcome: "ignored_unknown_payment" };
    const invoice = await this.invoices.lock(t, existing.invoice_id);
    const payment = await this.lock(t, existing.account_id, existing.id);
    if (payment.status === "refunded") return { outcome: "already_refunded", paymentId: payment.id };
    // A refund during a dispute (e.g. the seller accepts a PayPal claim) is applied too; the payment stays DISPUTED.
    if (!PAYMENTS.can(payment.status as PaymentStatus, "provider_refund")) return { outcome: `ignored_payment_${payment.status}`, paymentId: payment.id };
    if (e.currency !== payment.currency) return { outcome: "ignored_currency_mismatch", paymentId: payment.id };
    const already = new Dec(payment.amount_refunded);
    const left = new Dec(payment.amount).minus(already);
    let amount =
      e.refundedTotal !== undefined ? Dec.min(new Dec(e.refundedTotal), new Dec(payment.amount)).minus(already) : Dec.min(new Dec(e.refund ?? 0), left);
    if (amount.lte(0)) return { outcome: "already_refunded", paymentId: payment.id };
    amount = Dec.min(amount, left);
    const refunded = await this.refundIn(t, invoice, payment, "provider_refund", { reason: `refunded at ${e.provider}`, revokeAvailableOnly: true, actor: by.actor, amount, note: by.note });
    const state = refunded.status === "disputed" ? refunded.status_before_dispute : refunded.status;
    return { outcome: state === "refunded" ? "refunded" : "partially_refunded", paymentId: payment.id };
  }

  /**
   * A provider reports a dispute (chargeback) opened or closed. Opening marks
   * the payment DISPUTED; closing returns it to the state it had before,
   * whatever the outcome (kept in the history). Credits are not revoked
   * automatically: an admin decides whether they go too (VoidCreditLot on
   * the payment's lot, or RefundPayment once the dispute is closed).
   */
  async providerDisputed(t: Transaction, e: { provider: string; ref: PaymentRef; open: boolean; detail: string }, by: ProviderActor): Promise<ProviderOutcome> {
    const existing = await db.paymentByProviderRef(this.sequelize, t, e.provider, e.ref.id);
    if (!existing) return { outcome: "ignored_unknown_payment" };
    const payment = await this.lock(t, existing.account_id, existing.id);
    const from = payment.status as PaymentStatus;
    if (e.open) {
      if (from === "disputed") return { outcome: "already_disputed", paymentId: payment.id };
      if (!PAYMENTS.can(from, "open_dispute")) return { outcome: `ignored_payment_${from}`, paymentId: payment.id };
      const disputed = await db.setDispute(this.sequelize, t, payment, { status: PAYMENTS.next(from, "open_dispute"), statusBeforeDispute: from, metadata: { ...payment.metadata, dispute_reason: e.detail } });
      await this.recordHistory(t, disputed, from, by.actor, by.note);
      return { outcome: "disputed", paymentId: payment.id };
    }
    if (!PAYMENTS.can(from, "close_dispute")) return { outcome: "ignored_not_disputed", paymentId: payment.id };
    const back = payment.status_before_dispute ?? "succeeded";
    const closed = await db.setDispute(this.sequelize, t, payment, { status: back, statusBeforeDispute: null, metadata: { ...payment.metadata, dispute_outcome: e.detail } });
    await this.recordHistory(t, closed, from, by.actor, by.note);
    return { outcome: "dispute_closed", paymentId: payment.id, detail: e.detail };
  }

  /** SUCCEEDED + invoice PAID once covered + package credits granted; history written. */
  private async settle(t: Transaction, invoice: InvoiceRow, payment: PaymentRow, actor: string, note: string): Promise<PaymentRow> {
    const from = payment.status as PaymentStatus;
    PAYMENTS.check(from, "settle");
    const now = new Date();
    const paid = new Dec(invoice.amount_paid).plus(payment.amount);
    const amountPaid = formatMoney(paid, amountIn(invoice.currency));
    const covered = paid.gte(invoice.total);
    let creditsGranted = 0n;
    if (covered) {
      const credits = BigInt(invoice.credit_package_credits ?? 0);
      if (credits > 0n) {
        await this.ledger.creditIn(t, {
          accountId: invoice.account_id,
          amount: credits,
          type: "purchase",
          description: truncateText(`Credit package ${invoice.credit_package_slug} (invoice ${invoice.invoice_number})`),
          metadata: { invoice_id: invoice.id, package_slug: invoice.credit_package_slug },
          paymentId: payment.id,
          packageId: invoice.credit_package_id ?? null,
          createdBy: actor,
        });
        creditsGranted = credits;
      }
      await this.invoices.recordPaymentIn(t, invoice, amountPaid, { paidAt: now, paymentMethod: payment.payment_method });
    } else {
      await this.invoices.recordPaymentIn(t, invoice, amountPaid);
    }
    const settled = await db.setSucceeded(this.sequelize, t, payment, now, creditsGranted.toString());
    await this.recordHistory(t, settled, from, actor, note);
    return settled;
  }

  /**
   * Refunds `amount` (undefined: all that is left) of a payment. Credits are
   * taken back by provenance: from the lot the payment granted, its
   * refunded share of the credits (cumulative, rounded down, so partial
   * refunds that add up to the total take back exactly what was granted),
   * never from other lots. If the lot no longer holds them (spent, or held
   * by open reservations): CREDITS_ALREADY_SPENT, or with
   * `revokeAvailableOnly` what is there is taken and the rest recorded as
   * shortfall. A payment from before credit lots (no lot) draws from the
   * account's lots in burn-down order.
   */
  private async refundIn(
    t: Transaction,
    invoice: InvoiceRow,
    payment: PaymentRow,
    action: "refund" | "provider_refund",
    r: { reason: string; revokeAvailableOnly: boolean; actor: string; amount?: Decimal; note?: string },
  ): Promise<PaymentRow> {
    const from = payment.status as PaymentStatus;
    PAYMENTS.check(from, action);
    const disputed = from === "disputed";
    const column = amountIn(payment.currency);
    const total = new Dec(payment.amount);
    const before = new Dec(payment.amount_refunded);
    const refundable = total.minus(before);
    const refund = r.amount ?? refundable;
    if (refund.decimalPlaces() > column.scale) throw invalidField("amount", `has more decimal places than ${payment.currency} has (${column.scale})`);
    if (refund.gt(refundable)) throw invalidField("amount", `must be at most the ${formatMoney(refundable, column)} left to refund`);
    const after = before.plus(refund);
    const full = after.eq(total);
    const granted = BigInt(payment.credits_granted);
    const settled = BigInt(payment.credits_revoked) + BigInt(payment.credits_shortfall); // credits already accounted for by earlier refunds
    const due = (full ? granted : roundToInteger(new Dec(granted.toString()).times(after).div(total), "down")) - settled;
    let revoked = 0n;
    if (due > 0n) {
      const lotId = await db.lotOfPayment(this.sequelize, t, payment.account_id, payment.id);
      const debit = {
        accountId: payment.account_id,
        credits: due,
        type: "refund" as const,
        mode: r.revokeAvailableOnly ? ("partial" as const) : ("strict" as const),
        description: truncateText(`Refund of payment ${payment.id}`),
        metadata: { reason: r.reason, invoice_id: invoice.id, amount: formatMoney(refund, column) },
        paymentId: payment.id,
        ...(lotId ? { lotId } : {}),
      };
      try {
        revoked = -((await this.ledger.debitIn(t, debit, { allowEmpty: true }))?.transaction.amount ?? 0n);
      } catch (err) {
        if (!(err instanceof BillingError) || err.reason !== Reason.InsufficientCredits) throw err;
        const available = err.metadata.available ?? "0";
        throw new BillingError(
          "failed_precondition",
          Reason.CreditsAlreadySpent,
          `${due - BigInt(available)} of the ${due} credits this refund takes back were already spent; set revoke_available_only to take back the ${available} left`,
          [],
          { due: due.toString(), available },
        );
      }
    }
    const now = new Date();
    await this.invoices.recordRefundIn(t, invoice, formatMoney(new Dec(invoice.amount_paid).minus(refund), column), now);
    const to = full ? "refunded" : "partially_refunded";
    const updated = await db.setRefund(this.sequelize, t, payment, {
      // A disputed payment stays DISPUTED and returns to its refunded state when the dispute closes.
      status: disputed ? from : to,
      statusBeforeDispute: disputed ? to : payment.status_before_dispute,
      refundedAt: now,
      amountRefunded: formatMoney(after, column),
      creditsRevoked: (BigInt(payment.credits_revoked) + revoked).toString(),
      creditsShortfall: (BigInt(payment.credits_shortfall) + (due > 0n ? due - revoked : 0n)).toString(),
      metadata: { ...payment.metadata, refund_reason: r.reason },
    });
    await this.recordHistory(t, updated, from, r.actor, r.note ?? `${r.reason || "refunded"} (${formatMoney(refund, column)})`);
    return updated;
  }

  /** The invoice a provider event names, locked; undefined when there is none. */
  private async lockNamedInvoice(t: Transaction, invoiceId: string): Promise<InvoiceRow | undefined> {
    return this.invoices.lock(t, invoiceId).catch((err: unknown) => {
      if (err instanceof BillingError) return undefined;
      throw err;
    });
  }

  private async find(id: string): Promise<PaymentRow> {
    const row = await db.findPayment(this.sequelize, id);
    if (!row) throw notFound("payment", id);
    return row;
  }

  private async lock(t: Transaction, accountId: string, id: string): Promise<PaymentRow> {
    const row = await db.lockPayment(this.sequelize, t, accountId, id);
    if (!row) throw notFound("payment", id);
    return row;
  }

  /** Writes the history row of a change that led to `payment` (as it is now) from `from`. */
  private async recordHistory(t: Transaction, payment: PaymentRow, from: PaymentStatus | null, actor: string, note: string): Promise<void> {
    await db.insertHistory(this.sequelize, t, { account_id: payment.account_id, payment_id: payment.id, from_status: from, to_status: payment.status, actor, note, snapshot: snapshotOf(payment) });
  }
}

function refColumns(provider: string, ref: PaymentRef) {
  return { provider, provider_payment_id: ref.id, provider_secondary_id: ref.secondaryId ?? null };
}

function snapshotOf(p: PaymentRow): JsonObject {
  return { status: p.status, amount: formatMoney(p.amount, amountIn(p.currency)), currency: p.currency, payment_method: p.payment_method, credits_granted: String(p.credits_granted ?? 0) };
}

/** The caller-facing form of a payment row. */
function view(r: PaymentRow): PaymentView {
  const out: PaymentView = {
    id: r.id,
    accountId: r.account_id,
    invoiceId: r.invoice_id,
    amount: formatMoney(r.amount, amountIn(r.currency)),
    currency: r.currency,
    status: r.status as PaymentStatus,
    paymentMethod: r.payment_method as PaymentMethodName,
    provider: r.provider ?? "",
    providerPaymentId: r.provider_payment_id ?? "",
    providerSecondaryId: r.provider_secondary_id ?? "",
    stripePaymentIntentId: r.provider === "stripe" ? (r.provider_payment_id ?? "") : "",
    stripeChargeId: r.provider === "stripe" ? (r.provider_secondary_id ?? "") : "",
    paypalOrderId: r.provider === "paypal" ? (r.provider_secondary_id ?? "") : "",
    paypalCaptureId: r.provider === "paypal" ? (r.provider_payment_id ?? "") : "",
    manualReference: r.manual_reference ?? "",
    manualNotes: r.manual_notes ?? "",
    adminNotes: r.admin_notes ?? "",
    approvedBy: r.approved_by ?? "",
    failureReason: r.failure_reason ?? "",
    metadata: r.metadata ?? {},
    creditsGranted: BigInt(r.credits_granted ?? 0),
    creditsRevoked: BigInt(r.credits_revoked ?? 0),
    creditsShortfall: BigInt(r.credits_shortfall ?? 0),
    amountRefunded: formatMoney(r.amount_refunded ?? 0, amountIn(r.currency)),
    createdAt: r.created_at,
    updatedAt: r.updated_at,
  };
  if (r.approved_at) out.approvedAt = r.approved_at;
  if (r.processed_at) out.processedAt = r.processed_at;
  if (r.failed_at) out.failedAt = r.failed_at;
  if (r.refunded_at) out.refundedAt = r.refunded_at;
  return out;
}
